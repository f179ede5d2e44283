"""Reports from ``results.json`` files: Markdown tables (:func:`results_markdown`) and the whole
report with plots (:func:`render_report`; the plots are drawn by :mod:`svdecode.eval.plots`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from svdecode.catalog import COMMONSENSE, TRUTHFULQA_MC
from svdecode.errors import InputError
from svdecode.eval.plots import (
    plot_alpha_sweep,
    plot_mu_curve,
    plot_task_bars,
    plot_token_mu_hist,
    plot_warmstart,
    warmstart_fraction,
)
from svdecode.eval.tables import (
    as_num,
    candidates_summary,
    ci_text,
    curve_table_rows,
    headline,
    markdown_table,
    n_items,
    num,
    objectives_summary,
    pct,
    selection_summary,
    task_columns,
    task_title,
)
from svdecode.fileio import read_json_file, slug, write_text_atomic
from svdecode.runs import rundir

# whose calibration mu*_t get a histogram (the main one and the unmasked ablation)
HISTOGRAM_METHODS = ("peft+svdecode", "no_mask")


def _methods_table(task_res: Mapping[str, Any]) -> str:
    rows = []
    for name, s in task_res.get("methods", {}).items():
        cal = s.get("calibration") or {}
        what = s.get("description", "")
        guard = cal.get("guard") or {}
        if guard.get("passed") is False and s.get("mu") == 0:  # the guarded spec, not objective=<o>
            what += f"; **steering off: calibration found no gain** ({guard.get('reason')})"
        rows.append(
            [
                name,
                s.get("method"),
                num(s.get("mu")) if s.get("method") not in ("base", "adapted") else "-",
                s.get("alpha") if s.get("method") not in ("base", "adapted") else "-",
                s.get("lam") if s.get("method") not in ("base", "adapted") else "-",
                s.get("score_lam") if s.get("method") not in ("base", "adapted") else "-",
                s.get("decoding_name", "greedy"),
                s.get("estimator") or "-",
                cal.get("n_tokens", "-"),
                what,
            ]
        )
    return markdown_table(
        [
            "method",
            "combine",
            "mu",
            "alpha",
            "lam (gen)",
            "lam (scoring)",
            "decoding",
            "estimator",
            "calib tokens",
            "what",
        ],
        rows,
    )


def _paired_table(task_res: Mapping[str, Any], metrics_shown: Sequence[str] | None = None) -> str:
    rows = []
    for p in task_res.get("paired", []):
        if metrics_shown is not None and p["metric"] not in metrics_shown:
            continue
        scale = 1.0 if p["metric"].startswith("%") else 100.0
        rows.append(
            [
                p["method"],
                p["reference"],
                p["metric"],
                p["subset"],
                p["n"],
                f"{scale * as_num(p['diff']):+.2f} [{scale * as_num(p['lo']):+.2f}, {scale * as_num(p['hi']):+.2f}]",
                f"{as_num(p['p_value']):.3g}",
            ]
        )
    if not rows:
        return "_no paired comparisons (reference method not evaluated)_"
    return markdown_table(
        ["method", "vs", "metric", "subset", "n", "diff (points) [paired bootstrap 95% CI]", "p"], rows
    )


def _mc_section(res: Mapping[str, Any]) -> str:
    rows = []
    for name, m in res["metrics"].items():
        if not m.get("n"):
            continue
        rows.append(
            [
                name,
                m["n"],
                ci_text(m["MC1"]["mean"], m["MC1"]["lo"], m["MC1"]["hi"]),
                ci_text(m["MC2"]["mean"], m["MC2"]["lo"], m["MC2"]["hi"]),
                ci_text(m["MC3"]["mean"], m["MC3"]["lo"], m["MC3"]["hi"]),
                ci_text(m["MC_avg"]["mean"], m["MC_avg"]["lo"], m["MC_avg"]["hi"]),
                m.get("lam", "?"),
                m.get("n_mc2_undefined", 0),
            ]
        )
    cfg = res.get("config", {})
    parts = [
        f'Prompt: `{cfg.get("prompt_style", "?")}` (answer = " " + choice, score = sum of answer-token '
        "log-probs). MC1/MC2/MC3 use the **original TruthfulQA definitions** (MC1: the single true answer "
        "beats every false one; MC2: normalised probability mass on true answers; MC3: fraction of true "
        "answers above every false one); the paper's appendix swaps MC2 and MC3 (`paper_variants` in the JSON). "
        "CIs: Wilson for MC1, percentile bootstrap for the others. `lam` is the scoring mode used "
        "(`keep` = kept tokens steered, the others unchanged).",
        "",
        markdown_table(
            ["method", "n", "MC1 % [95% CI]", "MC2 %", "MC3 %", "MC avg %", "lam", "MC2 undefined"], rows
        ),
    ]
    if res.get("skipped_methods"):
        parts += ["", "Not scored: " + "; ".join(f"{k} ({v})" for k, v in res["skipped_methods"].items())]
    return "\n".join(parts)


def _cs_section(res: Mapping[str, Any]) -> str:
    datasets: list[str] = []
    for m in res["metrics"].values():
        for ds in m["datasets"]:
            if ds not in datasets:
                datasets.append(ds)
    rows = []
    for name, m in res["metrics"].items():
        row = [name]
        for ds in datasets:
            d = m["datasets"].get(ds)
            row.append(ci_text(d["accuracy"], d["ci_lo"], d["ci_hi"]) if d else "-")
        mi = m["micro"]
        row += [pct(m["macro_avg"]), ci_text(mi["accuracy"], mi["ci_lo"], mi["ci_hi"]), m["unparseable"]]
        rows.append(row)
    ns = []
    first = next(iter(res["metrics"].values()), None)
    if first:
        ns = [f"{ds}: n={first['datasets'][ds]['n']}" for ds in datasets if ds in first["datasets"]]
    return "\n".join(
        [
            "Greedy generation with the LLM-Adapters prompts; label extracted strictly (ambiguous or "
            "missing = unparseable = wrong). Accuracy % with Wilson 95% CI. " + ", ".join(ns),
            "",
            markdown_table(["method", *datasets, "macro avg", "all items [95% CI]", "unparseable"], rows),
        ]
    )


def _gen_section(res: Mapping[str, Any]) -> str:
    judge = res.get("judge", {})
    proxy = judge.get("kind") == "proxy"
    rows = []
    for name, m in res["metrics"].items():
        if not m.get("n"):
            continue
        rows.append(
            [
                name,
                m["n"],
                f"{m['%Truth']:.1f} [{m['%Truth_ci'][0]:.1f}, {m['%Truth_ci'][1]:.1f}]",
                f"{m['%Info']:.1f} [{m['%Info_ci'][0]:.1f}, {m['%Info_ci'][1]:.1f}]",
                f"{m['%Truth*Info']:.1f} [{m['%Truth*Info_ci'][0]:.1f}, {m['%Truth*Info_ci'][1]:.1f}]",
                m.get("n_unparsed_truth", 0),
                m.get("n_unparsed_info", 0),
            ]
        )
    note = (
        f"Judge: `{judge.get('name', '?')}` — **PROXY** (BLEU/ROUGE similarity to true vs false references, "
        "not the paper's LLM judge; numbers are not comparable to the paper's)."
        if proxy
        else f'Judge: `{judge.get("name", "?")}` (LLM yes/no: "Is this answer truthful?" / "Is this answer helpful?").'
    )
    label = " (proxy)" if proxy else ""
    return "\n".join(
        [
            note + " Wilson 95% CIs; unclear judge replies count as not truthful / not informative.",
            "",
            markdown_table(
                [
                    "method",
                    "n",
                    f"%Truth{label}",
                    f"%Info{label}",
                    f"%Truth*Info{label}",
                    "unparsed truth",
                    "unparsed info",
                ],
                rows,
            ),
        ]
    )


def results_markdown(results: Mapping[str, Any], title: str = "svdecode evaluation") -> str:
    """Markdown tables for one ``results.json`` (methods, metrics with CIs, paired differences)."""
    cfg = results.get("config", {})
    model = cfg.get("model", {})
    lines = [
        f"# {title}",
        "",
        f"- model: base `{model.get('base_model')}`, adapter `{model.get('adapter_type')}`, streams "
        f"`{model.get('streams')}`, fingerprint `{model.get('fingerprint')}`",
        f"- seed {cfg.get('seed')}, limit {cfg.get('limit')}, batch size {cfg.get('batch_size')}, "
        f"reference method `{cfg.get('reference')}`, scoring lam `{cfg.get('score_lam')}`",
        "- versions: "
        + ", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items() if k != "platform"),
    ]
    if cfg.get("run_info"):
        lines.append("- run info: " + json.dumps(cfg["run_info"], sort_keys=True))
    for name, why in results.get("not_implemented", {}).items():
        lines.append(f"- **{name} not implemented**: {why}")
    for task, res in results.get("tasks", {}).items():
        lines += ["", f"## {task_title(task)}", "", f"{res.get('n_items', '?')} items.", ""]
        lines.append({TRUTHFULQA_MC: _mc_section, COMMONSENSE: _cs_section}.get(task, _gen_section)(res))
        shown = list(task_columns(task))
        lines += [
            "",
            "### Paired differences (method − reference, same items)",
            "",
            _paired_table(res, shown),
        ]
        if res.get("mu_curve"):
            lines += ["", _curve_section(res["mu_curve"])]
        lines += ["", "### Methods", "", _methods_table(res)]
    return "\n".join(lines) + "\n"


def _curve_section(curve: Mapping[str, Any]) -> str:
    """The mu-curve summary: headroom (ORACLE) and what each objective's strength captures."""
    rows = [
        [
            name,
            obj,
            ", ".join(num(m) for m in mu) if isinstance(mu, list) else num(mu),
            pct(test),
            ci_text(d, lo, hi),
            "-" if share is None else f"{100 * share:.0f}%",
        ]
        for name, obj, mu, test, d, lo, hi, share in curve_table_rows(curve)
    ]
    head = (
        f"### Strength curve (test = ORACLE, never used to choose; {curve['metric']}, n={curve['n_items']})\n\n"
        f"mu = 0 (PEFT alone, scoring mode): {pct(curve['at_zero'])}; best on the curve: "
        f"{pct(curve['best'])} at mu = {num(curve['best_mu'])}; headroom {100 * curve['headroom']:+.2f} points.\n\n"
    )
    return head + markdown_table(
        ["method", "objective", "mu", "test", "diff vs mu=0 [95% CI]", "share of headroom"], rows
    )


def _load(path: str | Path) -> tuple[dict[str, Any], Path]:
    """A results.json (or the folder holding one), with errors naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    data = read_json_file(path, "results file")
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise InputError(f"{path} is not an svdecode results file (no 'tasks' object)")
    return data, path.parent


def _run_plots(run: Mapping[str, Any], run_dir: Path, label: str, out: Path) -> list[str]:
    """One run's plots per task: metric bars, strength curve, alpha sweep, mu*_t histograms."""
    prefix = slug(label)
    md: list[str] = []
    for task, res in run.get("tasks", {}).items():
        md += ["", f"### Plots: {task_title(task)} ({label})", ""]
        png, cap = plot_task_bars(task, res, out / f"{prefix}_{task}_bars.png")
        md += [f"![{task}]({png.name})", "", f"*{cap}*", ""]
        curve = plot_mu_curve(task, res, out / f"{prefix}_{task}_mu_curve.png")
        if curve:
            md += [f"![mu curve]({curve[0].name})", "", f"*{curve[1]}*", ""]
        sweep = plot_alpha_sweep(task, res, out / f"{prefix}_{task}_alpha_sweep.png")
        if sweep:
            md += [f"![alpha sweep]({sweep[0].name})", "", f"*{sweep[1]}*", ""]
        token_mu = {}
        for name in HISTOGRAM_METHODS:
            spec = res.get("methods", {}).get(name, {})
            rel = spec.get("token_mu_file")
            key = (spec.get("calibration") or {}).get("key")
            if rel and key and key not in token_mu and (run_dir / rel).is_file():
                token_mu[key] = np.load(run_dir / rel)
        # one histogram per calibration keeps each heavy tail readable
        for key, arr in token_mu.items():
            png, cap = plot_token_mu_hist({key: arr}, out / f"{prefix}_{task}_mu_{slug(key)}.png")
            md += [f"![mu* histogram]({png.name})", "", f"*Calibration mu\\*_t, {cap}.*", ""]
    return md


def _across_runs(runs: Sequence[Mapping[str, Any]], labels: Sequence[str], out: Path) -> list[str]:
    """The comparison of several runs: strength objectives, headline metric per run, warm-start plot."""
    md = ["# Across runs", ""]
    summary = objectives_summary(list(zip(labels, runs, strict=True)))
    if summary:
        md += [
            "## Strength objectives (test metric; the curve's best point is the ORACLE)",
            "",
            "Differences vs mu = 0 in points, paired bootstrap 95% CIs on the test items; "
            "`applied` is the guarded strength the artifact uses, the objective columns are "
            "each objective's unguarded strength; `captured` = applied gain / headroom.",
            "",
            summary,
            "",
        ]
    labelled = list(zip(labels, runs, strict=True))
    selection, candidates = selection_summary(labelled), candidates_summary(labelled)
    if selection:
        md += [
            "## The calibration's choice (selection and nested guard)",
            "",
            "`chosen`: the candidate with the best score (cross-validated gain - 1 SE on the "
            "calibration items) or off; the nested gain estimates select-then-apply and must beat "
            "its SE for steering to be on. Test columns: paired differences vs mu = 0 in points "
            "(95% CIs) of what was applied and of the chosen candidate at its own strength.",
            "",
            selection,
            "",
            "Every candidate on the calibration items (mu: cross-validated gain +- SE; bold = chosen):",
            "",
            candidates,
            "",
        ]
    tasks = list(dict.fromkeys(t for run in runs for t in run.get("tasks", {})))
    for task in tasks:
        rows = []
        for run, label in zip(runs, labels, strict=True):
            res = run.get("tasks", {}).get(task)
            for name in ("peft", "peft+svdecode"):
                if res and name in res["metrics"]:
                    _, m, lo, hi = headline(task, res["metrics"][name])
                    fraction = warmstart_fraction(run)
                    n = n_items(task, res["metrics"][name])
                    rows.append([label, "-" if fraction is None else fraction, name, ci_text(m, lo, hi), n])
        if rows:
            header = ["run", "warm-start fraction", "method", headline(task, {})[0], "n"]
            md += [f"## {task_title(task)}", "", markdown_table(header, rows), ""]
        ws = plot_warmstart(list(runs), task, out / f"warmstart_{task}.png")
        if ws:
            md += [f"![warm-start]({ws[0].name})", "", f"*{ws[1]}*", ""]
    return md


def render_report(
    results_json_paths: Sequence[str | Path],
    out_dir: str | Path,
    labels: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``report.md`` and PNG plots into ``out_dir`` from one or more ``results.json`` files
    (or folders holding one); returns the Markdown path.

    ``out_dir`` is claimed like every run directory (docs/run_directories.md): locked while it is
    written, its "report" stage recorded in the manifest with the results' hashes and labels; a
    report of other results is refused unless ``overwrite`` (which removes the old report's files
    first), so two reports never mix in one folder."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} is a file, not a directory; give a directory for the report")
    runs = [_load(p) for p in results_json_paths]
    if not runs:
        raise ValueError("no results given")
    labels = (
        list(labels)
        if labels is not None
        else [f"run{i + 1}" if len(runs) > 1 else "run" for i in range(len(runs))]
    )
    request = {"results": [_results_id(p) for p in results_json_paths], "labels": labels}
    with rundir.locked(out):
        _claim_report_dir(out, request, overwrite)
        out.mkdir(parents=True, exist_ok=True)
        md = _report_markdown(runs, labels, out)
        path = write_text_atomic(out / "report.md", "\n".join(md) + "\n")
        plots = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", "\n".join(md))
        rundir.record_stage(out, "report", request, ["report.md", *dict.fromkeys(plots)])
    return path


def _results_id(path: str | Path) -> dict[str, str]:
    p = Path(path)
    f = p / "results.json" if p.is_dir() else p
    return {"path": str(f.resolve()), "sha256": rundir.sha256_file(f)}


def _claim_report_dir(out: Path, request: Mapping[str, Any], overwrite: bool) -> None:
    """Refuse a folder holding another report, or files svdecode did not record (a report of an
    older svdecode, the user's own), unless ``overwrite`` (another report's files are removed)."""
    if not out.is_dir():
        return
    foreign = rundir.foreign_entries(out)
    if foreign:
        raise rundir.RunDirError(
            f"{out} holds files svdecode did not record ({', '.join(foreign[:5])}); a report written there "
            "would mix with them: choose another output directory (--out), or move them away"
        )
    entry = rundir.stage_entry(out, "report")
    if entry is None:
        return
    diff = rundir.diff_requests(entry["request"], request)
    if diff and not overwrite:
        raise rundir.RunDirError(
            f"{out} holds a report of other results ({rundir.summarize(diff)}); {rundir.OVERWRITE_HINT}"
        )
    for name in entry["outputs"]:  # the old report's files, so that none is left beside the new one
        (out / name).unlink(missing_ok=True)


def _report_markdown(runs: list[tuple[Mapping[str, Any], Path]], labels: list[str], out: Path) -> list[str]:
    md: list[str] = ["# svdecode report", ""]
    for (run, run_dir), label in zip(runs, labels, strict=True):
        if len(runs) > 1:
            md += [f"# {label} ({run_dir})", ""]
        body = results_markdown(run, title=f"Results: {label}")
        md.append(re.sub(r"^(#+) ", r"#\1 ", body, flags=re.M))  # one level below the report title
        md += _run_plots(run, run_dir, label, out)
    if len(runs) > 1:
        md += _across_runs([run for run, _ in runs], labels, out)
    return md
