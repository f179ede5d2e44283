"""svdecode.errors: the error types a user can act on, and the message of a missing pip extra."""

from __future__ import annotations

import json
import sys

import pytest

from svdecode.errors import InputError, MissingExtraError, ModelLoadError, SvdecodeError, require_extra

HARNESS_HINT = "pip install 'svdecode[harness]'"


def test_every_actionable_error_is_an_svdecode_error_and_keeps_its_builtin_base():
    assert issubclass(InputError, SvdecodeError) and issubclass(InputError, ValueError)
    assert issubclass(ModelLoadError, SvdecodeError) and issubclass(ModelLoadError, RuntimeError)
    assert issubclass(MissingExtraError, SvdecodeError) and issubclass(MissingExtraError, ImportError)


def test_require_extra_returns_the_module_when_installed():
    assert require_extra("json", "harness", "anything") is json


def test_require_extra_names_the_module_and_the_extra_when_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # other tests may have imported it
    with pytest.raises(MissingExtraError) as err:
        require_extra("matplotlib.pyplot", "harness", "the report's plots")
    assert str(err.value) == (
        "the report's plots needs 'matplotlib', which is not installed: pip install 'svdecode[harness]'"
    )


def test_the_report_plots_without_matplotlib_name_the_harness_extra(monkeypatch):
    from svdecode.eval import plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(
        MissingExtraError, match=r"'matplotlib'.*" + HARNESS_HINT.replace("[", r"\[").replace("]", r"\]")
    ):
        plots._plt()


@pytest.mark.parametrize("module", ["sacrebleu", "rouge_score"])
def test_the_generation_metrics_without_their_library_name_the_harness_extra(monkeypatch, module):
    from svdecode.eval import metrics

    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)
    metrics._bleu.cache_clear()
    metrics._rouge.cache_clear()
    try:
        with pytest.raises(MissingExtraError) as err:
            {"sacrebleu": metrics._bleu, "rouge_score": metrics._rouge}[module]()
    finally:
        metrics._bleu.cache_clear()
        metrics._rouge.cache_clear()
    assert f"{module!r}" in str(err.value) and HARNESS_HINT in str(err.value)


def test_a_hub_dataset_without_datasets_names_the_harness_extra(monkeypatch):
    from svdecode.data.files import load_hub

    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(MissingExtraError) as err:
        load_hub("some/dataset", "train", "q", "a")
    assert (
        "'datasets'" in str(err.value)
        and "'some/dataset'" in str(err.value)
        and HARNESS_HINT in str(err.value)
    )
