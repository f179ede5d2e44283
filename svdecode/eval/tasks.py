"""The evaluation task families as a registry, as lm-eval has: each family is one
:class:`TaskFamily` -- its data, how it is scored or generated, its calibration choices, its
report columns -- and the runner, the commands and the command line read :data:`TASKS` instead of
branching on names. A new family is one more entry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svdecode.calibration.objectives import ChoiceItem, ItemMetric, choice_accuracy
from svdecode.catalog import COMMONSENSE, TRUTHFULQA_GEN, TRUTHFULQA_MC
from svdecode.errors import InputError
from svdecode.eval.choices import calibration_choices, mc_choice_item, truthfulqa_mc_average
from svdecode.eval.commonsense import evaluate_commonsense
from svdecode.eval.truthfulqa_gen import evaluate_truthfulqa_gen
from svdecode.eval.truthfulqa_mc import evaluate_mc, mc_prompt

if TYPE_CHECKING:
    import argparse

    from svdecode.eval.judges import Judge
    from svdecode.eval.methods import MethodSpec
    from svdecode.eval.options import EvalOptions

# (model, items, specs, judge, options, cache_dir) -> the task's results
Evaluate = Callable[
    [Any, Sequence[Any], list["MethodSpec"], "Judge | None", "EvalOptions", Path], dict[str, Any]
]
ChoiceView = tuple[list[ChoiceItem] | None, ItemMetric]


@dataclass(frozen=True)
class TaskFamily:
    """One evaluation task family.

    ``load``: its shared test data; ``cli_data``: the test items and calibration pairs ``svdecode
    eval`` takes from its flags; ``evaluate``: scores or generates every method on the items;
    ``calibration_view``: the calibration pairs' multiple-choice view (the task objective and the
    guard judge on it), given the evaluation's MC prompt style; ``columns``: the metrics of the
    report's paired-differences table; ``per_dataset``: a limit subsets each dataset;
    ``curve``: it has the ORACLE strength curve (likelihood-scored test choices).
    """

    name: str
    title: str
    columns: tuple[str, ...]
    load: Callable[[], list[Any]]
    cli_data: Callable[[argparse.Namespace], tuple[list[Any], list[Any]]]
    evaluate: Evaluate
    calibration_view: Callable[[Sequence[Any], str], ChoiceView]
    per_dataset: bool = False
    curve: bool = False

    def subset(self, items: Sequence[Any], limit: int | None, seed: int) -> list[Any]:
        """A seeded subset (:func:`svdecode.data.sample`), per dataset when ``per_dataset``."""
        from svdecode import data

        if limit is None:
            return list(items)
        if not self.per_dataset:
            return data.sample(items, limit, seed)
        by_ds: dict[str, list[Any]] = {}
        for ex in items:
            by_ds.setdefault(ex.dataset, []).append(ex)
        chosen = {ex.id for exs in by_ds.values() for ex in data.sample(exs, limit, seed)}
        return [ex for ex in items if ex.id in chosen]

    def calibration_choices(self, calib: Sequence[Any] | None, mc_prompt_style: str) -> ChoiceView:
        """The calibration pairs' multiple-choice view (none without pairs)."""
        if not calib:
            return None, choice_accuracy
        return self.calibration_view(calib, mc_prompt_style)


def get_task(name: str) -> TaskFamily:
    """The registered family ``name`` (:class:`InputError` naming the known ones)."""
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}; choose from {tuple(TASKS)}")
    return TASKS[name]


# -- TruthfulQA -------------------------------------------------------------------------------------


def _truthfulqa_view(calib: Sequence[Any], mc_prompt_style: str) -> ChoiceView:
    """TruthfulQA MC answers after the evaluation's own MC prompt."""
    from svdecode.data import load_truthfulqa_mc

    by_id = {it.id: it for it in load_truthfulqa_mc()}
    items = [
        mc_choice_item(by_id[c.id], mc_prompt(by_id[c.id].question, mc_prompt_style))
        for c in calib
        if getattr(c, "id", None) in by_id
    ]
    return (items or None), truthfulqa_mc_average


def _truthfulqa_split(ns: argparse.Namespace):
    from svdecode.data import truthfulqa_mc_split

    return truthfulqa_mc_split(ns.tqa_calib, ns.tqa_test, ns.seed)


def _mc_cli_data(ns: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    from svdecode.data import sample

    tqa, mc_test = _truthfulqa_split(ns)
    return sample(mc_test, ns.limit, ns.seed), tqa.calib


def _gen_cli_data(ns: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    from svdecode.data import sample

    tqa, _ = _truthfulqa_split(ns)
    return sample(tqa.test, ns.limit, ns.seed), tqa.calib


def _load_mc() -> list[Any]:
    from svdecode.data import load_truthfulqa_mc

    return load_truthfulqa_mc()


def _load_gen() -> list[Any]:
    from svdecode.data import load_truthfulqa_generation

    return load_truthfulqa_generation()


def _common(opts: EvalOptions, cache_dir: Path) -> dict[str, Any]:
    return dict(batch_size=opts.batch_size, cache_dir=cache_dir, progress=opts.progress, seed=opts.seed)


def _evaluate_mc(model, items, specs, judge, opts: EvalOptions, cache_dir: Path) -> dict[str, Any]:
    return evaluate_mc(
        model, items, specs, prompt_style=opts.mc_prompt_style, max_length=opts.max_length,
        n_boot=opts.n_boot, **_common(opts, cache_dir),
    )  # fmt: skip


def _evaluate_gen(model, items, specs, judge, opts: EvalOptions, cache_dir: Path) -> dict[str, Any]:
    return evaluate_truthfulqa_gen(
        model, items, specs, judge, max_new_tokens=opts.max_new_tokens or 50, **_common(opts, cache_dir)
    )


# -- commonsense ------------------------------------------------------------------------------------


def _load_commonsense() -> list[Any]:
    from svdecode.data import load_commonsense

    return load_commonsense("all", "test")


def _commonsense_cli_data(ns: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    from svdecode.data import load_commonsense, load_task, sample

    test = [
        ex
        for name in ns.datasets.split(",")
        for ex in sample(load_commonsense(name, "test"), ns.limit, ns.seed)
    ]
    if ns.calib_data:
        return test, sample(load_task(ns.calib_data, "train"), ns.n_calib, ns.seed)
    return test, recorded_calibration_split(Path(ns.steered or ns.adapter or "."))


def recorded_calibration_split(src: Path) -> list[Any]:
    """The calibration split ``svdecode run`` recorded next to the adapter in ``src``."""
    from svdecode.data import load_task, splits_from_manifest

    manifest = src / "split_manifest.json"
    if not manifest.is_file():
        raise InputError(f"{manifest} not found: give --calib-data to calibrate the commonsense methods")
    try:
        recorded = json.loads(manifest.read_text())
        pool = load_task(recorded.get("source", "commonsense:all"), "train")
        return splits_from_manifest(pool, recorded).calib
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError) as err:
        raise InputError(
            f"{manifest} is corrupt ({type(err).__name__}: {err}); give --calib-data instead"
        ) from err


def _commonsense_view(calib: Sequence[Any], mc_prompt_style: str) -> ChoiceView:
    """Each example's dataset label options."""
    return calibration_choices(calib)


def _evaluate_commonsense(model, items, specs, judge, opts: EvalOptions, cache_dir: Path) -> dict[str, Any]:
    return evaluate_commonsense(
        model, items, specs, max_new_tokens=opts.max_new_tokens or 32, **_common(opts, cache_dir)
    )


# in the order of svdecode.catalog.TASK_NAMES (the command line's choices)
TASKS: dict[str, TaskFamily] = {
    TRUTHFULQA_MC: TaskFamily(
        TRUTHFULQA_MC,
        title="TruthfulQA multiple choice",
        columns=("MC1", "MC2", "MC3", "MC_avg"),
        load=_load_mc,
        cli_data=_mc_cli_data,
        evaluate=_evaluate_mc,
        calibration_view=_truthfulqa_view,
        curve=True,
    ),
    COMMONSENSE: TaskFamily(
        COMMONSENSE,
        title="Commonsense reasoning",
        columns=("accuracy",),
        load=_load_commonsense,
        cli_data=_commonsense_cli_data,
        evaluate=_evaluate_commonsense,
        calibration_view=_commonsense_view,
        per_dataset=True,
        curve=True,
    ),
    TRUTHFULQA_GEN: TaskFamily(
        TRUTHFULQA_GEN,
        title="TruthfulQA open-ended",
        columns=("%Truth", "%Info", "%Truth*Info"),
        load=_load_gen,
        cli_data=_gen_cli_data,
        evaluate=_evaluate_gen,
        calibration_view=_truthfulqa_view,
    ),
}
