"""Reports from ``results.json`` files: Markdown tables and simple matplotlib plots (Agg backend).

* accuracy / MC / %Truth bars per method with 95% CI error bars, per task;
* histograms of the calibration mu*_t (symmetric-log axis, clipped to the 1-99% quantiles,
  because |delta| is scaled by p_phi and single mu*_t can be huge);
* an alpha sweep (headline metric vs alpha) when "alpha=<a>" methods were evaluated;
* a warm-start-length plot (metric vs fraction of an epoch, "peft" vs "peft+svdecode") when
  several runs carry ``config.run_info.warmstart_fraction``.

Every plot's caption (in the Markdown) gives n and the kind of CI.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# whose calibration mu*_t get a histogram (the main one and the unmasked ablation)
HISTOGRAM_METHODS = ("peft+svdecode", "no_mask")

TASK_TITLES = {
    "truthfulqa_mc": "TruthfulQA multiple choice",
    "commonsense": "Commonsense reasoning",
    "truthfulqa_gen": "TruthfulQA open-ended",
}


# ---------------------------------------------------------------------------------------------
# Small helpers


def _f(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _pct(x: Any, digits: int = 1) -> str:
    v = _f(x)
    return "n/a" if math.isnan(v) else f"{100.0 * v:.{digits}f}"


def _num(x: Any, digits: int = 4) -> str:
    v = _f(x)
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "-inf" if v < 0 else "inf"
    return f"{v:.{digits}g}"


def _ci(mean: Any, lo: Any, hi: Any, scale: float = 100.0) -> str:
    m, a, b = _f(mean), _f(lo), _f(hi)
    if math.isnan(m):
        return "n/a"
    return f"{scale * m:.1f} [{scale * a:.1f}, {scale * b:.1f}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    return "\n".join(lines)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+=_-]", "_", name)


def headline(task: str, m: Mapping[str, Any]) -> tuple[str, float, float, float]:
    """(label, mean, lo, hi) of a task's headline metric, as fractions (percent for TQA gen / 100)."""
    if task == "truthfulqa_mc":
        d = m.get("MC_avg", {})
        return "MC avg (bootstrap 95% CI)", _f(d.get("mean")), _f(d.get("lo")), _f(d.get("hi"))
    if task == "commonsense":
        d = m.get("micro", {})
        return (
            "accuracy, all items (Wilson 95% CI)",
            _f(d.get("accuracy")),
            _f(d.get("ci_lo")),
            _f(d.get("ci_hi")),
        )
    if task == "truthfulqa_gen":
        lo, hi = m.get("%Truth*Info_ci", (math.nan, math.nan))
        return "%Truth*Info (Wilson 95% CI)", _f(m.get("%Truth*Info")) / 100, _f(lo) / 100, _f(hi) / 100
    raise ValueError(f"unknown task {task!r}")


def _n(task: str, m: Mapping[str, Any]) -> int:
    if task == "commonsense":
        return int(m.get("micro", {}).get("n", 0))
    return int(m.get("n", 0))


# ---------------------------------------------------------------------------------------------
# Markdown


def _methods_table(task_res: Mapping[str, Any]) -> str:
    rows = []
    for name, s in task_res.get("methods", {}).items():
        cal = s.get("calibration") or {}
        rows.append(
            [
                name,
                s.get("method"),
                _num(s.get("mu")) if s.get("method") not in ("base", "adapted") else "-",
                s.get("alpha") if s.get("method") not in ("base", "adapted") else "-",
                s.get("lam") if s.get("method") not in ("base", "adapted") else "-",
                s.get("score_lam") if s.get("method") not in ("base", "adapted") else "-",
                s.get("decoding_name", "greedy"),
                s.get("estimator") or "-",
                cal.get("n_tokens", "-"),
                s.get("description", ""),
            ]
        )
    return _table(
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
                f"{scale * _f(p['diff']):+.2f} [{scale * _f(p['lo']):+.2f}, {scale * _f(p['hi']):+.2f}]",
                f"{_f(p['p_value']):.3g}",
            ]
        )
    if not rows:
        return "_no paired comparisons (reference method not evaluated)_"
    return _table(
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
                _ci(m["MC1"]["mean"], m["MC1"]["lo"], m["MC1"]["hi"]),
                _ci(m["MC2"]["mean"], m["MC2"]["lo"], m["MC2"]["hi"]),
                _ci(m["MC3"]["mean"], m["MC3"]["lo"], m["MC3"]["hi"]),
                _ci(m["MC_avg"]["mean"], m["MC_avg"]["lo"], m["MC_avg"]["hi"]),
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
        _table(["method", "n", "MC1 % [95% CI]", "MC2 %", "MC3 %", "MC avg %", "lam", "MC2 undefined"], rows),
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
            row.append(_ci(d["accuracy"], d["ci_lo"], d["ci_hi"]) if d else "-")
        mi = m["micro"]
        row += [_pct(m["macro_avg"]), _ci(mi["accuracy"], mi["ci_lo"], mi["ci_hi"]), m["unparseable"]]
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
            _table(["method", *datasets, "macro avg", "all items [95% CI]", "unparseable"], rows),
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
            _table(
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
        lines += ["", f"## {TASK_TITLES.get(task, task)}", "", f"{res.get('n_items', '?')} items.", ""]
        if task == "truthfulqa_mc":
            lines.append(_mc_section(res))
            shown = ["MC1", "MC2", "MC3", "MC_avg"]
        elif task == "commonsense":
            lines.append(_cs_section(res))
            shown = ["accuracy"]
        else:
            lines.append(_gen_section(res))
            shown = ["%Truth", "%Info", "%Truth*Info"]
        lines += [
            "",
            "### Paired differences (method − reference, same items)",
            "",
            _paired_table(res, shown),
        ]
        lines += ["", "### Methods", "", _methods_table(res)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grouped_bars(
    groups: Sequence[str],
    series: Mapping[str, Sequence[tuple[float, float, float]]],
    ylabel: str,
    title: str,
    path: Path,
    scale: float = 100.0,
) -> Path:
    plt = _plt()
    n_series = max(1, len(series))
    width = 0.8 / n_series
    fig, ax = plt.subplots(figsize=(max(6.0, 2.6 + len(groups) * (0.35 + 0.18 * n_series)), 4.2))
    x = np.arange(len(groups))
    for i, (name, vals) in enumerate(series.items()):
        means = np.array([scale * v[0] for v in vals])
        lo = np.array([scale * v[1] for v in vals])
        hi = np.array([scale * v[2] for v in vals])
        err = np.vstack([np.clip(means - lo, 0, None), np.clip(hi - means, 0, None)])
        err = np.nan_to_num(err)
        ax.bar(x + (i - (n_series - 1) / 2) * width, means, width, yerr=err, capsize=2, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(
        groups, rotation=20 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center"
    )
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2 if n_series > 12 else 1, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_task_bars(task: str, res: Mapping[str, Any], path: str | Path) -> tuple[Path, str]:
    """Bars per method with 95% CI error bars; returns (path, caption)."""
    path = Path(path)
    mets = {k: v for k, v in res["metrics"].items() if v and (v.get("n") or v.get("micro", {}).get("n"))}
    if task == "truthfulqa_mc":
        groups = ["MC1", "MC2", "MC3", "MC_avg"]
        series = {
            n: [(_f(m[g]["mean"]), _f(m[g]["lo"]), _f(m[g]["hi"])) for g in groups] for n, m in mets.items()
        }
        n = next(iter(mets.values()))["n"] if mets else 0
        caption = f"TruthfulQA MC (original MC1/MC2/MC3), n={n} questions; error bars: Wilson (MC1) / bootstrap 95% CI."
        _grouped_bars(groups, series, "score (%)", f"TruthfulQA MC, n={n}", path)
    elif task == "commonsense":
        groups = []
        for m in mets.values():
            for ds in m["datasets"]:
                if ds not in groups:
                    groups.append(ds)
        series = {}
        for name, m in mets.items():
            vals = []
            for ds in groups:
                d = m["datasets"].get(ds)
                vals.append((_f(d["accuracy"]), _f(d["ci_lo"]), _f(d["ci_hi"])) if d else (math.nan,) * 3)
            mi = m["micro"]
            vals.append((_f(mi["accuracy"]), _f(mi["ci_lo"]), _f(mi["ci_hi"])))
            series[name] = vals
        first = next(iter(mets.values()), None)
        ns = ", ".join(
            f"{ds} n={first['datasets'][ds]['n']}" for ds in groups if first and ds in first["datasets"]
        )
        caption = f"Commonsense accuracy per dataset and over all items ({ns}); error bars: Wilson 95% CI."
        _grouped_bars([*groups, "all"], series, "accuracy (%)", "Commonsense accuracy", path)
    elif task == "truthfulqa_gen":
        groups = ["%Truth", "%Info", "%Truth*Info"]
        series = {
            name: [(_f(m[g]) / 100, _f(m[f"{g}_ci"][0]) / 100, _f(m[f"{g}_ci"][1]) / 100) for g in groups]
            for name, m in mets.items()
        }
        judge = res.get("judge", {})
        proxy = " (PROXY judge: BLEU/ROUGE similarity, not an LLM)" if judge.get("kind") == "proxy" else ""
        n = next(iter(mets.values()))["n"] if mets else 0
        caption = (
            f"TruthfulQA open-ended, judge `{judge.get('name')}`{proxy}, n={n}; error bars: Wilson 95% CI."
        )
        _grouped_bars(
            groups, series, "% of answers", f"TruthfulQA open-ended, n={n}{' (proxy)' if proxy else ''}", path
        )
    else:
        raise ValueError(f"unknown task {task!r}")
    return path, caption


def plot_token_mu_hist(
    token_mu: Mapping[str, np.ndarray], path: str | Path, title: str = ""
) -> tuple[Path, str]:
    """Histogram(s) of mu*_t on a symmetric-log axis, clipped to the 1-99% quantiles (heavy tails);
    lines mark the mean (of all tokens), the median and 0."""
    plt = _plt()
    path = Path(path)
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in token_mu.items() if np.asarray(v).size}
    arrays = {k: v[np.isfinite(v)] for k, v in arrays.items()}
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    captions = []
    for label, x in arrays.items():
        lo, hi = np.quantile(x, [0.01, 0.99])
        if lo == hi:
            lo, hi = lo - 1.0, hi + 1.0
        clipped = x[(x >= lo) & (x <= hi)]
        s = float(np.median(np.abs(x))) or 1e-6
        edges = np.sinh(np.linspace(np.arcsinh(lo / s), np.arcsinh(hi / s), 61)) * s
        ax.hist(clipped, bins=edges, alpha=0.5, label=f"{label} (n={x.size})")
        captions.append(
            f"{label}: n={x.size} tokens, mean={x.mean():.4g}, median={np.median(x):.4g}, "
            f"q01={lo:.4g}, q99={hi:.4g}, {100 * (1 - clipped.size / x.size):.1f}% outside the plotted range, "
            f"{100 * (x < 0).mean():.1f}% negative"
        )
        ax.axvline(float(x.mean()), ls="--", lw=1, color="k")
        ax.axvline(float(np.median(x)), ls=":", lw=1, color="k")
        linthresh = s
    if arrays:
        ax.set_xscale("symlog", linthresh=linthresh)
        ticks = sorted({0.0, *(float(t) for x in arrays.values() for t in np.quantile(x, [0.01, 0.5, 0.99]))})
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:.3g}" for t in ticks], fontsize=7, rotation=30)
    ax.axvline(0.0, lw=0.8, color="grey")
    ax.set_xlabel("per-token optimal strength mu*_t (symlog axis, clipped to 1-99% quantiles)")
    ax.set_ylabel("tokens")
    ax.set_title(title or "Calibration: distribution of mu*_t (dashed: mean, dotted: median)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, "; ".join(captions)


def _alpha_points(task: str, res: Mapping[str, Any]) -> list[tuple[float, float, float, float]]:
    pts = []
    for name, spec in res.get("methods", {}).items():
        if name.startswith("alpha=") and name in res["metrics"]:
            _, m, lo, hi = headline(task, res["metrics"][name])
            pts.append((_f(spec["alpha"]), m, lo, hi))
    return sorted(pts)


def plot_alpha_sweep(task: str, res: Mapping[str, Any], path: str | Path) -> tuple[Path, str] | None:
    """Headline metric vs alpha for the "alpha=<a>" methods (each recalibrated), with the "peft"
    baseline as a horizontal line; None when fewer than two alphas were evaluated."""
    pts = _alpha_points(task, res)
    if len(pts) < 2:
        return None
    plt = _plt()
    path = Path(path)
    label, *_ = headline(task, next(iter(res["metrics"].values())))
    a = np.array([p[0] for p in pts])
    m = np.array([100 * p[1] for p in pts])
    err = np.nan_to_num(
        np.vstack([m - 100 * np.array([p[2] for p in pts]), 100 * np.array([p[3] for p in pts]) - m])
    )
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.errorbar(
        a,
        m,
        yerr=np.clip(err, 0, None),
        marker="o",
        capsize=3,
        label="peft+svdecode (recalibrated per alpha)",
    )
    if "peft" in res["metrics"]:
        _, pm, plo, phi = headline(task, res["metrics"]["peft"])
        ax.axhline(100 * pm, color="grey", ls="--", label="peft")
        ax.axhspan(100 * plo, 100 * phi, color="grey", alpha=0.15)
    ax.set_xlabel("confidence-mask threshold alpha")
    ax.set_ylabel(f"{label.split(' (')[0]} (%)")
    n = _n(task, res["metrics"][next(k for k in res["metrics"] if k.startswith("alpha="))])
    ax.set_title(f"{TASK_TITLES.get(task, task)}: alpha sweep, n={n}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    proxy = " (PROXY judge)" if res.get("judge", {}).get("kind") == "proxy" else ""
    return path, f"{TASK_TITLES.get(task, task)}: {label}{proxy} vs alpha, n={n}; shaded: peft 95% CI."


def _warmstart(run: Mapping[str, Any]) -> float | None:
    info = run.get("config", {}).get("run_info", {}) or {}
    for key in ("warmstart_fraction", "warmstart_epochs", "epochs"):
        value = _f(info.get(key))
        if not math.isnan(value):  # `svdecode eval` records None when no fraction was given
            return value
    return None


def plot_warmstart(
    runs: Sequence[Mapping[str, Any]],
    task: str,
    path: str | Path,
    methods: Sequence[str] = ("peft", "peft+svdecode"),
) -> tuple[Path, str] | None:
    """Headline metric vs warm-start length (fraction of an epoch) for peft vs peft+svdecode, one
    point per run; None with fewer than two runs that carry ``run_info.warmstart_fraction``."""
    pts: dict[str, list[tuple[float, float, float, float]]] = {m: [] for m in methods}
    ns = []
    for run in runs:
        frac = _warmstart(run)
        res = run.get("tasks", {}).get(task)
        if frac is None or res is None:
            continue
        for m in methods:
            if m in res["metrics"]:
                _, mean, lo, hi = headline(task, res["metrics"][m])
                pts[m].append((frac, mean, lo, hi))
                ns.append(_n(task, res["metrics"][m]))
    if max((len(v) for v in pts.values()), default=0) < 2:
        return None
    plt = _plt()
    path = Path(path)
    label = headline(task, {})[0]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for m, p in pts.items():
        if not p:
            continue
        p.sort()
        x = np.array([q[0] for q in p])
        y = np.array([100 * q[1] for q in p])
        err = np.nan_to_num(
            np.vstack([y - 100 * np.array([q[2] for q in p]), 100 * np.array([q[3] for q in p]) - y])
        )
        ax.errorbar(x, y, yerr=np.clip(err, 0, None), marker="o", capsize=3, label=m)
    ax.set_xlabel("warm-start length (fraction of an epoch)")
    ax.set_ylabel(f"{label.split(' (')[0]} (%)")
    ax.set_title(f"{TASK_TITLES.get(task, task)}: warm-start length", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    n_txt = f"n={min(ns)}" if ns and min(ns) == max(ns) else f"n={min(ns)}-{max(ns)}"
    return path, f"{TASK_TITLES.get(task, task)}: {label} vs warm-start length, {n_txt} items per point."


# ---------------------------------------------------------------------------------------------
# The report


def _load(path: str | Path) -> tuple[dict[str, Any], Path]:
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    return json.loads(path.read_text()), path.parent


def render_report(
    results_json_paths: Sequence[str | Path], out_dir: str | Path, labels: Sequence[str] | None = None
) -> Path:
    """Write ``report.md`` and PNG plots into ``out_dir`` from one or more ``results.json`` files
    (or folders holding one); returns the Markdown path."""
    from svdecode.evaluate import _write_text_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = [_load(p) for p in results_json_paths]
    if not runs:
        raise ValueError("no results given")
    labels = (
        list(labels)
        if labels is not None
        else [f"run{i + 1}" if len(runs) > 1 else "run" for i in range(len(runs))]
    )
    md: list[str] = ["# svdecode report", ""]
    for (run, run_dir), label in zip(runs, labels, strict=True):
        prefix = _slug(label)
        if len(runs) > 1:
            md += [f"# {label} ({run_dir})", ""]
        body = results_markdown(run, title=f"Results: {label}")
        md.append(re.sub(r"^(#+) ", r"#\1 ", body, flags=re.M))  # one level below the report title
        for task, res in run.get("tasks", {}).items():
            md += ["", f"### Plots: {TASK_TITLES.get(task, task)} ({label})", ""]
            png, cap = plot_task_bars(task, res, out / f"{prefix}_{task}_bars.png")
            md += [f"![{task}]({png.name})", "", f"*{cap}*", ""]
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
                png, cap = plot_token_mu_hist({key: arr}, out / f"{prefix}_{task}_mu_{_slug(key)}.png")
                md += [f"![mu* histogram]({png.name})", "", f"*Calibration mu\\*_t, {cap}.*", ""]
    if len(runs) > 1:
        tasks = list(dict.fromkeys(t for run, _ in runs for t in run.get("tasks", {})))
        md += ["# Across runs", ""]
        for task in tasks:
            rows = []
            for (run, _), label in zip(runs, labels, strict=True):
                res = run.get("tasks", {}).get(task)
                if not res:
                    continue
                for name in ("peft", "peft+svdecode"):
                    if name in res["metrics"]:
                        hl, m, lo, hi = headline(task, res["metrics"][name])
                        rows.append(
                            [
                                label,
                                _warmstart(run) if _warmstart(run) is not None else "-",
                                name,
                                _ci(m, lo, hi),
                                _n(task, res["metrics"][name]),
                            ]
                        )
            if rows:
                md += [
                    f"## {TASK_TITLES.get(task, task)}",
                    "",
                    _table(["run", "warm-start fraction", "method", headline(task, {})[0], "n"], rows),
                    "",
                ]
            ws = plot_warmstart([r for r, _ in runs], task, out / f"warmstart_{task}.png")
            if ws:
                md += [f"![warm-start]({ws[0].name})", "", f"*{ws[1]}*", ""]
    return _write_text_atomic(out / "report.md", "\n".join(md) + "\n")
