"""matplotlib plots (Agg backend) for the report; every caption gives n and the kind of CI.

* accuracy / MC / %Truth bars per method with 95% CI error bars, per task;
* histograms of the calibration mu*_t (symmetric-log axis, clipped to the 1-99% quantiles,
  because |delta| is scaled by p_phi and single mu*_t can be huge);
* an alpha sweep (headline metric vs alpha) when "alpha=<a>" methods were evaluated;
* a warm-start-length plot (metric vs fraction of an epoch, "peft" vs "peft+svdecode") when
  several runs carry ``config.run_info.warmstart_fraction``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from svdecode.catalog import COMMONSENSE, TRUTHFULQA_GEN, TRUTHFULQA_MC
from svdecode.errors import require_extra
from svdecode.eval.tables import as_num, headline, n_items, task_title


def _plt():
    matplotlib = require_extra("matplotlib", "harness", "the report's plots")
    matplotlib.use("Agg")
    return require_extra("matplotlib.pyplot", "harness", "the report's plots")


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
    if task == TRUTHFULQA_MC:
        groups = ["MC1", "MC2", "MC3", "MC_avg"]
        series = {
            n: [(as_num(m[g]["mean"]), as_num(m[g]["lo"]), as_num(m[g]["hi"])) for g in groups]
            for n, m in mets.items()
        }
        n = next(iter(mets.values()))["n"] if mets else 0
        caption = f"TruthfulQA MC (original MC1/MC2/MC3), n={n} questions; error bars: Wilson (MC1) / bootstrap 95% CI."
        _grouped_bars(groups, series, "score (%)", f"TruthfulQA MC, n={n}", path)
    elif task == COMMONSENSE:
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
                vals.append(
                    (as_num(d["accuracy"]), as_num(d["ci_lo"]), as_num(d["ci_hi"])) if d else (math.nan,) * 3
                )
            mi = m["micro"]
            vals.append((as_num(mi["accuracy"]), as_num(mi["ci_lo"]), as_num(mi["ci_hi"])))
            series[name] = vals
        first = next(iter(mets.values()), None)
        ns = ", ".join(
            f"{ds} n={first['datasets'][ds]['n']}" for ds in groups if first and ds in first["datasets"]
        )
        caption = f"Commonsense accuracy per dataset and over all items ({ns}); error bars: Wilson 95% CI."
        _grouped_bars([*groups, "all"], series, "accuracy (%)", "Commonsense accuracy", path)
    elif task == TRUTHFULQA_GEN:
        groups = ["%Truth", "%Info", "%Truth*Info"]
        series = {
            name: [
                (as_num(m[g]) / 100, as_num(m[f"{g}_ci"][0]) / 100, as_num(m[f"{g}_ci"][1]) / 100)
                for g in groups
            ]
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
            pts.append((as_num(spec["alpha"]), m, lo, hi))
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
    n = n_items(task, res["metrics"][next(k for k in res["metrics"] if k.startswith("alpha="))])
    ax.set_title(f"{task_title(task)}: alpha sweep, n={n}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    proxy = " (PROXY judge)" if res.get("judge", {}).get("kind") == "proxy" else ""
    return path, f"{task_title(task)}: {label}{proxy} vs alpha, n={n}; shaded: peft 95% CI."


def warmstart_fraction(run: Mapping[str, Any]) -> float | None:
    info = run.get("config", {}).get("run_info", {}) or {}
    for key in ("warmstart_fraction", "warmstart_epochs", "epochs"):
        value = as_num(info.get(key))
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
        frac = warmstart_fraction(run)
        res = run.get("tasks", {}).get(task)
        if frac is None or res is None:
            continue
        for m in methods:
            if m in res["metrics"]:
                _, mean, lo, hi = headline(task, res["metrics"][m])
                pts[m].append((frac, mean, lo, hi))
                ns.append(n_items(task, res["metrics"][m]))
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
    ax.set_title(f"{task_title(task)}: warm-start length", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    n_txt = f"n={min(ns)}" if ns and min(ns) == max(ns) else f"n={min(ns)}-{max(ns)}"
    return path, f"{task_title(task)}: {label} vs warm-start length, {n_txt} items per point."


def plot_mu_curve(task: str, res: Mapping[str, Any], path: str | Path) -> tuple[Path, str] | None:
    """Test metric (ORACLE) and the calibration objective along mu, every objective's strength marked."""
    curve = res.get("mu_curve")
    if not curve:
        return None
    plt = _plt()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(curve["grid"], [100 * v for v in curve["test"]], color="black", lw=1.2, label="test (ORACLE)")
    top.axhline(100 * curve["at_zero"], color="grey", ls=":", lw=1, label="mu = 0 (PEFT)")
    for name, m in curve["marks"].items():
        top.plot([m["mu"]], [100 * m["test"]], "o", label=f"{name}: {m['objective']}")
    top.set_ylabel(f"test {curve['metric']} (%)")
    top.legend(fontsize=7, loc="best")
    cal = curve.get("calibration") or {}
    if cal:
        bottom.plot(cal["mu"], cal["nll_per_token"], color="tab:blue", label="calibration NLL / token")
        bottom.set_ylabel("calibration NLL / token")
        if cal.get("task"):
            twin = bottom.twinx()
            twin.plot(
                cal["mu"], [100 * v for v in cal["task"]], color="tab:orange", label="calibration task metric"
            )
            twin.set_ylabel("calibration task metric (%)", color="tab:orange")
    for m in curve["marks"].values():
        bottom.axvline(m["mu"], color="grey", lw=0.6, ls="--")
    for ax in (top, bottom):
        ax.set_xscale("symlog", linthresh=1e-2)
    bottom.set_xlabel("steering strength mu (symlog)")
    fig.suptitle(f"{task_title(task)}: strength curve (n={curve['n_items']})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    cap = (
        f"Test {curve['metric']} along mu (ORACLE: never used to choose), n={curve['n_items']}; headroom "
        f"{100 * curve['headroom']:+.2f} points at mu = {curve['best_mu']:.3g}. Bottom: the calibration "
        "objective. Markers/dashed lines: each objective's strength."
    )
    return path, cap
