"""Formatting shared by the report's tables and plots: numbers, percentages, CIs, Markdown tables,
and the headline metric of each task."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from svdecode.calibration.objectives import BINNED, OFF
from svdecode.catalog import COMMONSENSE, TRUTHFULQA_GEN, TRUTHFULQA_MC


def task_title(task: str) -> str:
    """The task family's title in the registry (:data:`svdecode.eval.tasks.TASKS`)."""
    from svdecode.eval.tasks import TASKS  # lazily: the registry imports the evaluators

    return TASKS[task].title if task in TASKS else task


def task_columns(task: str) -> tuple[str, ...]:
    """The metrics of the task family's paired-differences table (the registry's ``columns``)."""
    from svdecode.eval.tasks import TASKS

    return TASKS[task].columns


def as_num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def pct(x: Any, digits: int = 1) -> str:
    v = as_num(x)
    return "n/a" if math.isnan(v) else f"{100.0 * v:.{digits}f}"


def num(x: Any, digits: int = 4) -> str:
    v = as_num(x)
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "-inf" if v < 0 else "inf"
    return f"{v:.{digits}g}"


def ci_text(mean: Any, lo: Any, hi: Any, scale: float = 100.0) -> str:
    m, a, b = as_num(mean), as_num(lo), as_num(hi)
    if math.isnan(m):
        return "n/a"
    return f"{scale * m:.1f} [{scale * a:.1f}, {scale * b:.1f}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    return "\n".join(lines)


def headline(task: str, m: Mapping[str, Any]) -> tuple[str, float, float, float]:
    """(label, mean, lo, hi) of a task's headline metric, as fractions (percent for TQA gen / 100)."""
    if task == TRUTHFULQA_MC:
        d = m.get("MC_avg", {})
        return "MC avg (bootstrap 95% CI)", as_num(d.get("mean")), as_num(d.get("lo")), as_num(d.get("hi"))
    if task == COMMONSENSE:
        d = m.get("micro", {})
        return (
            "accuracy, all items (Wilson 95% CI)",
            as_num(d.get("accuracy")),
            as_num(d.get("ci_lo")),
            as_num(d.get("ci_hi")),
        )
    if task == TRUTHFULQA_GEN:
        lo, hi = m.get("%Truth*Info_ci", (math.nan, math.nan))
        return (
            "%Truth*Info (Wilson 95% CI)",
            as_num(m.get("%Truth*Info")) / 100,
            as_num(lo) / 100,
            as_num(hi) / 100,
        )
    raise ValueError(f"unknown task {task!r}")


def n_items(task: str, m: Mapping[str, Any]) -> int:
    if task == COMMONSENSE:
        return int(m.get("micro", {}).get("n", 0))
    return int(m.get("n", 0))


def curve_table_rows(curve: Mapping[str, Any]) -> list[list[Any]]:
    """Rows for the report: one per marked strength."""
    rows = []
    for name, m in curve["marks"].items():
        d = m["diff"]
        rows.append(
            [
                name,
                m.get("objective") or "-",
                m.get("mu_bins") or m["mu"],  # a binned strength shows its bins' strengths
                m["test"],
                d["diff"],
                d["lo"],
                d["hi"],
                m["share_of_headroom"],
            ]
        )
    return rows


def _signed(x: float) -> str:
    return f"{100 * x:+.2f}"


def _diff_cell(mark: Mapping[str, Any] | None) -> str:
    if mark is None:
        return "-"
    d = mark["diff"]
    return f"{_signed(d['diff'])} [{_signed(d['lo'])}, {_signed(d['hi'])}]"


def _objective_mark(marks: Mapping[str, Any], objective: str) -> Mapping[str, Any] | None:
    """An objective's own strength on the curve; the curve marks a strength once, so when the
    applied spec already sits there (same objective, not binned) that mark stands for it."""
    own = marks.get(f"objective={objective}")
    if own is not None:
        return own
    return next(
        (
            m
            for m in marks.values()
            if m.get("objective") == objective and (not m.get("binned") or objective == BINNED)
        ),
        None,
    )


def objectives_summary(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> str | None:
    """One row per (run, task) with a strength curve: PEFT alone (mu = 0), the applied (guarded)
    strength and every objective's unguarded strength as paired differences on the test items, the
    ORACLE's best point on the curve, the headroom and the share of it the applied strength
    captures. None when no run has a curve."""
    curves = [
        (label, task, res["mu_curve"])
        for label, run in runs
        for task, res in run.get("tasks", {}).items()
        if res.get("mu_curve")
    ]
    # the objectives in the order the first curve marks them (every calibration records them all)
    objectives = list(
        dict.fromkeys(
            [n.split("=", 1)[1] for _, _, c in curves for n in c["marks"] if n.startswith("objective=")]
            + [m["objective"] for _, _, c in curves for m in c["marks"].values() if m.get("objective")]
        )
    )
    rows = []
    for label, task, curve in curves:
        marks = curve["marks"]
        applied = marks.get("peft+svdecode", {})
        share = applied.get("share_of_headroom")
        rows.append(
            [
                label,
                task_title(task),
                curve["n_items"],
                pct(curve["at_zero"]),
                f"{num(applied.get('mu'), 3)}: {_diff_cell(marks.get('peft+svdecode'))}",
                *(_diff_cell(_objective_mark(marks, o)) for o in objectives),
                f"{pct(curve['best'])} (mu {num(curve['best_mu'], 3)})",
                _signed(curve["headroom"]),
                "-" if share is None else f"{100 * share:.0f}%",
            ]
        )
    if not rows:
        return None
    header = [
        "run",
        "benchmark",
        "n",
        "PEFT (mu=0) %",
        "applied mu: diff [95% CI]",
        *objectives,
        "ORACLE best % (mu)",
        "headroom",
        "captured",
    ]
    return markdown_table(header, rows)


def _selections(runs: Sequence[tuple[str, Mapping[str, Any]]]):
    """(label, task, selection record, curve marks) of every run and task whose calibration chose
    among candidates and that has a strength curve."""
    for label, run in runs:
        for task, res in run.get("tasks", {}).items():
            spec = (res.get("methods") or {}).get("peft+svdecode") or {}
            sel = (spec.get("calibration") or {}).get("selection")
            if sel and res.get("mu_curve"):
                yield label, task, sel, res["mu_curve"]["marks"]


def _gain(sel: Mapping[str, Any], x: float) -> str:
    """A cross-validated gain in the judge's unit: points of the task metric, or nats per token."""
    return _signed(x) if sel.get("judge") == "task" else f"{x:+.3g} nats"


def selection_summary(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> str | None:
    """One row per run and task: the candidate the selection chose (and its score), the nested
    estimate of select-then-apply, what was applied with its test gain, the chosen candidate's own
    strength on test, and whether the nested estimate's sign matched that test gain. None when no
    run has a selection record and a curve."""
    rows = []
    for label, task, sel, marks in _selections(runs):
        chosen = sel["chosen"]
        score = sel["candidates"].get(chosen, {}).get("score")
        own = None if chosen == OFF else _objective_mark(marks, chosen)
        sign = (
            "-" if own is None else ("yes" if (sel["nested_gain"] > 0) == (own["diff"]["diff"] > 0) else "no")
        )
        rows.append(
            [
                label,
                task_title(task),
                chosen if score is None else f"{chosen} ({_gain(sel, score)})",
                f"{_gain(sel, sel['nested_gain'])} ± {_gain(sel, sel['nested_se']).lstrip('+')}",
                f"{sel.get('applied', '-')}: {_diff_cell(marks.get('peft+svdecode'))}",
                _diff_cell(own),
                sign,
            ]
        )
    header = ["run", "benchmark", "chosen (score)", "nested gain ± SE", "applied: test diff [95% CI]",
              "chosen at its own mu: test diff", "nested sign = test sign"]  # fmt: skip
    return markdown_table(header, rows) if rows else None


def candidates_summary(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> str | None:
    """One row per run and task: every candidate's strength and cross-validated gain +- its
    standard error (the chosen one in bold). None without selection records."""
    found = list(_selections(runs))
    names = list(dict.fromkeys(n for *_, sel, _ in found for n in sel["candidates"]))
    rows = []
    for label, task, sel, _ in found:
        cells = []
        for name in names:
            c = sel["candidates"].get(name)
            if c is None:
                cells.append("-")
                continue
            mu = ", ".join(num(m, 3) for m in c["mu"]) if isinstance(c["mu"], list) else num(c["mu"], 3)
            cell = f"{mu}: {_gain(sel, c['cv_gain'])} ± {_gain(sel, c['se']).lstrip('+')}"
            cells.append(f"**{cell}**" if name == sel["chosen"] else cell)
        rows.append([label, task_title(task), *cells])
    return markdown_table(["run", "benchmark", *names], rows) if rows else None
