"""Reports: Markdown tables and PNG plots from small, hand-built results.json files (no model)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "matplotlib", reason="the report's plots need the harness extra: pip install 'svdecode[harness]'"
)

from svdecode import eval as ev
from svdecode.eval import metrics, plots, tables
from svdecode.eval import report as rp

METHODS = ["base", "peft", "peft+svdecode", "alpha=0.1", "alpha=0.3", "alpha=0.5"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _specs(run_dir: Path, rng: np.random.Generator) -> dict[str, dict]:
    out = {}
    for name in METHODS:
        if name == "base":
            spec = ev.MethodSpec("base", "base")
        elif name == "peft":
            spec = ev.MethodSpec("peft", "adapted")
        else:
            alpha = 0.1 if name == "peft+svdecode" else float(name.split("=")[1])
            key = f"svdecode@alpha={alpha:g}"
            spec = ev.MethodSpec(
                name, "svdecode", mu=-0.8, alpha=alpha, calibration={"key": key, "n_tokens": 500}
            )
        sj = spec.to_json()
        if spec.steered:
            rel = Path("token_mu") / f"{key}.npy"
            (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            np.save(run_dir / rel, rng.standard_cauchy(500) - 0.8)  # heavy tails, like real mu*_t
            sj["token_mu_file"] = str(rel)
        out[name] = sj
    return out


def make_run(run_dir: Path, frac: float, seed: int, proxy: bool = True) -> dict:
    """A results.json with all three tasks, built with the harness's own metric helpers."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    specs = _specs(run_dir, rng)
    bonus = {name: 0.1 * i for i, name in enumerate(METHODS)}
    tasks = {}
    # TruthfulQA MC
    items = {}
    for name in METHODS:
        recs = []
        for q in range(20):
            mc1 = float(rng.random() < 0.3 + bonus[name])
            recs.append(
                {"id": f"truthfulqa/{q}", "MC1": mc1, "MC2": float(rng.random()), "MC3": float(rng.random())}
            )
        items[name] = recs
    tasks["truthfulqa_mc"] = {
        "config": {"prompt_style": "qa_primer"},
        "items": items,
        "metrics": {
            n: {**metrics.aggregate_mc(r, n_boot=200), "lam": "keep" if n not in ("base", "peft") else "n/a"}
            for n, r in items.items()
        },
        "skipped_methods": {},
    }
    # commonsense
    items = {}
    for name in METHODS:
        recs = []
        for ds, n in (("boolq", 12), ("piqa", 8)):
            for i in range(n):
                ok = rng.random() < 0.5 + bonus[name] / 2
                gold = "true" if ds == "boolq" else "solution1"
                out = f"the correct answer is {gold}" if ok else "hmm"
                recs.append(
                    {
                        "id": f"{ds}/test/{i}",
                        "dataset": ds,
                        "gold": gold,
                        "output": out,
                        "pred": gold if ok else None,
                        "correct": int(ok),
                    }
                )
        items[name] = recs
    tasks["commonsense"] = {
        "config": {},
        "items": items,
        "metrics": {n: ev.commonsense_metrics(r) for n, r in items.items()},
    }
    # TruthfulQA open-ended
    judge = {"name": "proxy:bleu-diff" if proxy else "openai:judge", "kind": "proxy" if proxy else "llm"}
    items = {}
    for name in METHODS:
        items[name] = [
            {
                "id": f"truthfulqa/{q}",
                "answer": "x",
                "truthful": bool(rng.random() < 0.4 + bonus[name] / 2),
                "informative": bool(rng.random() < 0.8),
            }
            for q in range(15)
        ]
    tasks["truthfulqa_gen"] = {
        "config": {},
        "judge": judge,
        "items": items,
        "metrics": {n: ev.tqa_gen_metrics(r, judge) for n, r in items.items()},
    }
    for task, res in tasks.items():
        res["methods"] = specs
        res["n_items"] = len(next(iter(res["items"].values())))
        res["cache"] = {}
        res["paired"] = ev.paired_comparisons(
            task, res["items"], [(m, "peft") for m in METHODS if m != "peft"], n_boot=200
        )
    results = {
        "schema": ev.SCHEMA,
        "created": "2026-01-01T00:00:00",
        "config": {
            "seed": seed,
            "reference": "peft",
            "score_lam": "keep",
            "run_info": {"warmstart_fraction": frac},
            "model": {},
        },
        "versions": {"torch": "x"},
        "not_implemented": dict(ev.NOT_IMPLEMENTED),
        "tasks": tasks,
    }
    ev.write_results(results, run_dir)
    return ev.load_results(run_dir)


def _pngs_in(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)


def test_render_report_two_runs(tmp_path):
    r1 = make_run(tmp_path / "half", 0.5, seed=1)
    r2 = make_run(tmp_path / "full", 1.0, seed=2)
    md_path = rp.render_report(
        [tmp_path / "half" / "results.json", tmp_path / "full"], tmp_path / "report", labels=["half", "full"]
    )
    md = md_path.read_text()
    pngs = _pngs_in(md)
    expected = {
        f"{lab}_{t}_{kind}.png"
        for lab in ("half", "full")
        for t in ev.TASKS
        for kind in ("bars", "alpha_sweep")
    }
    expected |= {f"{lab}_{t}_mu_svdecode_alpha=0.1.png" for lab in ("half", "full") for t in ev.TASKS}
    expected |= {f"warmstart_{t}.png" for t in ev.TASKS}
    assert set(pngs) == expected
    for name in pngs:
        data = (tmp_path / "report" / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
    # every plot has a caption with n and the kind of CI
    for cap in re.findall(r"^\*(.+)\*$", md, flags=re.M):
        assert "n=" in cap
    assert "Wilson 95% CI" in md and "bootstrap 95% CI" in md
    # the open-ended judge is labelled as a proxy
    assert "PROXY" in md and "%Truth (proxy)" in md
    # values in the tables are the metrics of the results, as percentages with CIs
    m = r1["tasks"]["commonsense"]["metrics"]["peft"]["micro"]
    assert f"{100 * m['accuracy']:.1f} [{100 * m['ci_lo']:.1f}, {100 * m['ci_hi']:.1f}]" in md
    mc1 = r2["tasks"]["truthfulqa_mc"]["metrics"]["peft+svdecode"]["MC1"]
    assert f"{100 * mc1['mean']:.1f} [{100 * mc1['lo']:.1f}, {100 * mc1['hi']:.1f}]" in md
    # across-runs table with the warm-start fractions
    assert "# Across runs" in md and "| half | 0.5 | peft |" in md and "| full | 1.0 | peft+svdecode |" in md
    # histogram caption reports the quantiles of the saved mu*_t
    mu = np.load(tmp_path / "half" / r1["tasks"]["commonsense"]["methods"]["peft+svdecode"]["token_mu_file"])
    q01, q99 = np.quantile(mu, [0.01, 0.99])
    assert f"q01={q01:.4g}, q99={q99:.4g}" in md
    assert f"n={mu.size} tokens" in md


def test_single_run_has_no_warmstart_plot_and_md_is_written(tmp_path):
    make_run(tmp_path / "run", 1.0, seed=3, proxy=False)
    md = rp.render_report([tmp_path / "run"], tmp_path / "rep").read_text()
    assert not [p for p in _pngs_in(md) if p.startswith("warmstart")]
    assert "PROXY" not in md and "Is this answer truthful?" in md
    # results.md from write_results: one table row per method per task
    res_md = (tmp_path / "run" / "results.md").read_text()
    for name in METHODS:
        assert res_md.count(f"| {name} |") >= 3
    assert "TaD not implemented" in res_md


def test_plot_helpers_skip_when_nothing_to_plot(tmp_path):
    res = make_run(tmp_path / "run", 1.0, seed=4)
    mc = res["tasks"]["truthfulqa_mc"]
    only_one_alpha = {
        **mc,
        "methods": {k: v for k, v in mc["methods"].items() if k != "alpha=0.3" and k != "alpha=0.5"},
    }
    assert plots.plot_alpha_sweep("truthfulqa_mc", only_one_alpha, tmp_path / "a.png") is None
    assert plots.plot_warmstart([res], "truthfulqa_mc", tmp_path / "w.png") is None
    # runs whose warm-start fraction was recorded as None are not points (no empty plot)
    unknown = [make_run(tmp_path / f"u{i}", None, seed=5 + i) for i in range(2)]
    assert plots.plot_warmstart(unknown, "truthfulqa_mc", tmp_path / "u.png") is None
    path, cap = plots.plot_alpha_sweep("truthfulqa_mc", mc, tmp_path / "b.png")
    assert path.read_bytes()[:8] == PNG_MAGIC and "n=20" in cap


def test_headline_metrics():
    cs = {"micro": {"accuracy": 0.5, "ci_lo": 0.4, "ci_hi": 0.6, "n": 10}}
    assert tables.headline("commonsense", cs)[1:] == (0.5, 0.4, 0.6)
    gen = {"%Truth*Info": 40.0, "%Truth*Info_ci": [30.0, 50.0]}
    assert tables.headline("truthfulqa_gen", gen)[1:] == pytest.approx((0.4, 0.3, 0.5))
    with pytest.raises(ValueError):
        tables.headline("nope", {})


def _mark(mu: float, diff: float, lo: float, hi: float, share: float | None) -> dict:
    return {"mu": mu, "diff": {"diff": diff, "lo": lo, "hi": hi}, "share_of_headroom": share}


def test_objectives_summary_rows_come_from_the_curve_marks():
    from svdecode.eval.tables import objectives_summary

    curve = {
        "n_items": 317,
        "at_zero": 0.31,
        "best": 0.315,
        "best_mu": 0.68,
        "headroom": 0.005,
        "marks": {
            "peft+svdecode": _mark(1.29, 0.0035, -0.009, 0.015, 0.7),
            "objective=nll": _mark(1.29, 0.0035, -0.009, 0.015, 0.7),
            "objective=mean": _mark(20.8, -0.0138, -0.048, 0.02, -2.8),
        },
    }
    off = {**curve, "headroom": 0.0, "marks": {"peft+svdecode": _mark(0.0, 0.0, 0.0, 0.0, None)}}
    runs = [
        ("a", {"tasks": {"truthfulqa_mc": {"mu_curve": curve}, "truthfulqa_gen": {}}}),
        ("b", {"tasks": {"commonsense": {"mu_curve": off}}}),
        ("c", {"tasks": {"truthfulqa_gen": {}}}),
    ]
    applied_only = {
        **curve,
        "marks": {"peft+svdecode": {**_mark(1.6, 0.003, -0.005, 0.012, 0.6), "objective": "nll"}},
    }
    assert objectives_summary([("d", {"tasks": {"truthfulqa_mc": {"mu_curve": applied_only}}})]).splitlines()[
        2
    ].split(" | ")[4:6] == ["1.6: +0.30 [-0.50, +1.20]", "+0.30 [-0.50, +1.20]"]  # nll = the applied mark
    lines = objectives_summary(runs).splitlines()
    assert lines[0].split(" | ")[5:7] == ["nll", "mean"]
    assert len(lines) == 4  # header, rule, one row per run and task with a curve
    assert lines[2].split(" | ") == [
        "| a", "TruthfulQA multiple choice", "317", "31.0", "1.29: +0.35 [-0.90, +1.50]",
        "+0.35 [-0.90, +1.50]", "-1.38 [-4.80, +2.00]", "31.5 (mu 0.68)", "+0.50", "70% |",
    ]  # fmt: skip
    assert lines[3].split(" | ")[4:7] == ["0: +0.00 [+0.00, +0.00]", "-", "-"]
    assert lines[3].endswith("| - |")
    assert objectives_summary(runs[2:]) is None


def test_methods_table_says_when_the_guard_turned_steering_off():
    from svdecode.eval.report import _methods_table

    guard = {"enabled": True, "passed": False, "reason": "held-out gain -0.03 vs its standard error 0.04"}
    cal = {"n_tokens": 747, "guard": guard}
    methods = {
        "peft+svdecode": {"method": "svdecode", "mu": 0.0, "calibration": cal, "description": "guarded"},
        "objective=nll": {"method": "svdecode", "mu": 0.98, "calibration": cal, "description": "unguarded"},
    }
    rows = _methods_table({"methods": methods}).splitlines()[2:]
    assert "steering off: calibration found no gain** (held-out gain -0.03" in rows[0]
    assert "steering off" not in rows[1]
    cal_on = {"n_tokens": 747, "guard": {**guard, "passed": True}}
    on = _methods_table({"methods": {"peft+svdecode": {**methods["peft+svdecode"], "calibration": cal_on}}})
    assert "steering off" not in on


def test_selection_and_candidate_tables_come_from_the_selection_record():
    from svdecode.eval.tables import candidates_summary, selection_summary

    def sel(chosen, applied, nested, se, judge="task"):
        cands = {
            "nll": {"mu": 1.29, "cv_gain": 0.011, "se": 0.0108, "score": 0.0002},
            "binned": {"mu": [1.18, 8.89], "cv_gain": -0.004, "se": 0.01, "score": -0.014},
        }
        return {"chosen": chosen, "applied": applied, "nested_gain": nested, "nested_se": se,
                "judge": judge, "candidates": cands}  # fmt: skip

    def run(selection, marks):
        spec = {"method": "svdecode", "calibration": {"selection": selection}}
        curve = {"marks": marks}
        return {"tasks": {"truthfulqa_mc": {"methods": {"peft+svdecode": spec}, "mu_curve": curve}}}

    off = {"peft+svdecode": {**_mark(0.0, 0.0, 0.0, 0.0, 0.0), "objective": "off"}}
    nll = {**_mark(1.29, 0.0035, -0.009, 0.015, 0.7), "objective": "nll"}
    binned = {**_mark(1.29, -0.002, -0.01, 0.01, None), "objective": "binned", "binned": True}
    runs = [
        ("weak", run(sel("nll", "off", 0.0047, 0.0101), {**off, "objective=nll": nll})),
        ("wrong", run(sel("binned", "off", -0.01, 0.008), {**off, "objective=binned": binned})),
        ("on", run(sel("binned", "binned", 0.02, 0.01), {"peft+svdecode": binned})),
        ("none", run(sel("off", "off", -0.001, 0.001), off)),
        ("no record", {"tasks": {"truthfulqa_mc": {"mu_curve": {"marks": off}}}}),
    ]
    rows = [line.split(" | ") for line in selection_summary(runs).splitlines()[2:]]
    assert len(rows) == 4  # the run without a selection record has no row
    assert rows[0][2:] == [
        "nll (+0.02)", "+0.47 ± 1.01", "off: +0.00 [+0.00, +0.00]", "+0.35 [-0.90, +1.50]", "yes |"
    ]  # fmt: skip
    assert rows[1][2] == "binned (-1.40)" and rows[1][5:] == ["-0.20 [-1.00, +1.00]", "yes |"]
    assert rows[2][4:] == ["binned: -0.20 [-1.00, +1.00]", "-0.20 [-1.00, +1.00]", "no |"]  # applied bins
    assert rows[3][2] == "off" and rows[3][5:] == ["-", "- |"]
    cands = candidates_summary(runs).splitlines()
    assert cands[0] == "| run | benchmark | nll | binned |"
    assert cands[2].split(" | ")[2:] == ["**1.29: +1.10 ± 1.08**", "1.18, 8.89: -0.40 ± 1.00 |"]
    nats = run(sel("nll", "nll", 0.02, 0.01, judge="nll"), {"peft+svdecode": nll})
    assert "+0.02 nats ± 0.01 nats" in selection_summary([("nats", nats)])
    assert selection_summary(runs[4:]) is None and candidates_summary(runs[4:]) is None
