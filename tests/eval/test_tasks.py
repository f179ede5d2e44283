"""The evaluation task registry (svdecode.eval.tasks.TASKS): the command line, the runner and the
report read it; names are defined once (svdecode.catalog)."""

from __future__ import annotations

import pytest

from svdecode import catalog
from svdecode.cli import build_parser
from svdecode.data import Example
from svdecode.errors import InputError
from svdecode.eval import run_eval
from svdecode.eval.tables import task_columns, task_title
from svdecode.eval.tasks import TASKS, get_task


def test_registry_holds_every_family_the_command_line_offers():
    assert tuple(TASKS) == catalog.TASK_NAMES
    assert build_parser().parse_args(["eval", "--out", "o", "--tasks", *TASKS]).tasks == list(TASKS)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--out", "o", "--tasks", "nope"])
    assert all(name == family.name for name, family in TASKS.items())
    assert task_title(catalog.COMMONSENSE) == "Commonsense reasoning"
    assert task_columns(catalog.TRUTHFULQA_MC) == ("MC1", "MC2", "MC3", "MC_avg")
    assert {n for n, f in TASKS.items() if f.curve} == {catalog.TRUTHFULQA_MC, catalog.COMMONSENSE}


def test_unknown_task_is_refused_naming_the_known_ones(tmp_path):
    with pytest.raises(InputError, match="unknown task 'nope'; choose from"):
        get_task("nope")
    with pytest.raises(InputError, match="unknown task 'nope'"):
        run_eval(None, tmp_path / "e", ("nope",))
    assert not (tmp_path / "e").exists()


def test_commonsense_subsets_each_dataset_the_others_the_whole():
    items = [Example(f"{ds}/{i}", ds, "p", " a") for ds in ("boolq", "piqa") for i in range(5)]
    cs = get_task(catalog.COMMONSENSE).subset(items, 2, seed=0)
    assert sorted(ex.dataset for ex in cs) == ["boolq", "boolq", "piqa", "piqa"]
    assert len(get_task(catalog.TRUTHFULQA_GEN).subset(items, 2, seed=0)) == 2
    assert get_task(catalog.TRUTHFULQA_GEN).subset(items, None, seed=0) == items


def test_calibration_choices_follow_the_family():
    calib = [Example("boolq/0", "boolq", "Q?", " the correct answer is true", "true")]
    choices, metric = get_task(catalog.COMMONSENSE).calibration_choices(calib, "plain")
    assert [c.options for c in choices] == [(" the correct answer is true", " the correct answer is false")]
    assert metric.__name__ == "choice_accuracy"
    assert get_task(catalog.COMMONSENSE).calibration_choices([], "plain")[0] is None
