"""svdecode.checks: the number rules every entry point checks its arguments with, and path checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from svdecode import checks
from svdecode.checks import POSITIVE_INT, SEED, UNIT_INTERVAL, Rule, check, parse
from svdecode.errors import InputError


@pytest.mark.parametrize(
    ("rule", "good", "bad"),
    [
        (POSITIVE_INT, [1, 7, np.int64(3)], [0, -1, 1.0, True, "1"]),
        (UNIT_INTERVAL, [0, 0.5, 1.0, np.float32(0.25)], [-0.01, 1.01, math.nan, math.inf, False]),
        (SEED, [0, 2**32 - 1], [-1, 2**32]),
        (Rule("float", lo=0, hi=1, lo_open=True), [1e-9, 1.0], [0.0, 1.5]),
        (Rule("float", allow_inf=True), [math.inf, -math.inf, 0.0], [math.nan]),
        (Rule("bool"), [True, False], [0, 1, "true"]),
    ],
)
def test_rules_accept_exactly_their_range(rule, good, bad):
    assert all(rule.accepts(v) for v in good)
    assert not any(rule.accepts(v) for v in bad)


def test_rules_describe_their_range_in_the_error():
    assert POSITIVE_INT.describe() == "an integer >= 1"
    assert UNIT_INTERVAL.describe() == "a number in [0, 1]"
    assert Rule("float", lo=0, hi=1, hi_open=True).describe() == "a number in [0, 1)"
    assert Rule("float").describe() == "a finite number"
    with pytest.raises(InputError, match=r"^alpha must be a number in \[0, 1\], got 1.5$"):
        check("alpha", 1.5, UNIT_INTERVAL)
    assert check("alpha", None, UNIT_INTERVAL, optional=True) is None
    assert check("alpha", 0.3, UNIT_INTERVAL) == 0.3


def test_parse_reads_command_line_numbers_by_rule():
    assert parse("4", POSITIVE_INT) == 4 and isinstance(parse("4", POSITIVE_INT), int)
    assert parse("0.25", UNIT_INTERVAL) == 0.25
    with pytest.raises(ValueError, match="must be an integer >= 1, got '1.5'"):
        parse("1.5", POSITIVE_INT)
    with pytest.raises(ValueError, match="must be an integer >= 1, got 0"):
        parse("0", POSITIVE_INT)


def test_check_generation_names_the_bad_parameter():
    checks.check_generation({"max_new_tokens": 5, "top_p": 0.9, "do_sample": True})
    with pytest.raises(InputError, match="top_p"):
        checks.check_generation({"top_p": 0.0})


def test_fit_context_keeps_fitting_ids_truncates_on_request_and_else_says_how_long():
    assert checks.fit_context([1, 2, 3], 3, "prompt", truncate=False) == [1, 2, 3]
    assert checks.fit_context([1, 2, 3, 4], 2, "prompt", truncate=True) == [3, 4]
    with pytest.raises(InputError, match="prompt has 4 tokens, more than the 2"):
        checks.fit_context([1, 2, 3, 4], 2, "prompt", truncate=False)
    with pytest.raises(InputError, match="no room is left"):
        checks.fit_context([1], 0, "prompt", truncate=True)


def test_context_size_reads_the_first_positive_position_limit():
    class Cfg:
        max_position_embeddings = None
        n_positions = 1024

    assert checks.context_size(Cfg()) == 1024
    assert checks.context_size(object()) is None


def test_paths_and_model_sources(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    assert checks.existing_dir(tmp_path, "out") == tmp_path
    with pytest.raises(InputError, match="is a file, not a directory"):
        checks.existing_dir(tmp_path / "f.txt", "out")
    with pytest.raises(InputError, match="is a directory, not a file"):
        checks.existing_file(tmp_path, "data")
    assert checks.looks_local("./model") and checks.looks_local("a/b/c") and checks.looks_local("C:\\m")
    assert not checks.looks_local("owner/name") and not checks.looks_local("gpt2")
    checks.check_model_source("owner/name")  # a hub id passes; it is checked when loaded
    with pytest.raises(InputError, match="does not exist \\(it is a local path, not a hub id\\)"):
        checks.check_model_source(str(tmp_path / "nope" / "x"))
    with pytest.raises(InputError, match="is a file"):
        checks.check_model_source(str(tmp_path / "f.txt"))
