"""``svdecode demo``: the main job, end to end on the default model and the shared data.

Warm-start LoRA on a small merged commonsense training subset, calibrate mu_bar per task (on the
commonsense calibration split, and on a TruthfulQA calibration split that never overlaps its test
questions), evaluate base / PEFT / PEFT+SVDecode on commonsense test items and TruthfulQA MC,
print the comparison table and write the report. Sized to finish in about 15 minutes on a
2-core CPU; every stage caches its output, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from svdecode.catalog import COMMONSENSE, TRUTHFULQA_MC
from svdecode.checks import POSITIVE_INT, SEED, check, check_model_source
from svdecode.data import COMMONSENSE_DATASETS, load_commonsense, sample, truthfulqa_mc_split
from svdecode.errors import InputError
from svdecode.eval import run_eval
from svdecode.eval.choices import calibration_choices
from svdecode.eval.report import render_report
from svdecode.eval.runner import check_eval_dir, check_method_names
from svdecode.runs import rundir
from svdecode.train import METHODS, WarmstartConfig
from svdecode.train.pipeline import run_pipeline

DEMO_DATASETS = ("boolq", "ARC-Easy", "ARC-Challenge", "openbookqa", "social_i_qa", "winogrande")


@dataclass
class DemoConfig:
    out_dir: str = "runs/demo"
    base: str = "default"
    peft: str = "lora"
    n_train: int = 128  # merged commonsense training examples for the warm-start
    n_calib: int = 64  # commonsense calibration examples (held out of training)
    n_test: int = 40  # test items per commonsense dataset
    datasets: Sequence[str] = DEMO_DATASETS
    tqa_calib: int = 100  # TruthfulQA questions calibrating mu_bar for the MC task
    tqa_test: int = 100  # TruthfulQA MC test questions (disjoint from the calibration ones)
    methods: Sequence[str] = ("base", "peft", "peft+svdecode")
    mc_prompt_style: str = "plain"
    max_new_tokens: int = 12  # "the correct answer is <label>" fits in ~8 tokens
    batch_size: int = 8
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Every option in range (and the output directory usable) before the warm-start starts."""
        for name in ("n_train", "n_calib", "n_test", "tqa_calib", "tqa_test", "max_new_tokens", "batch_size"):
            check(name, getattr(self, name), POSITIVE_INT)
        check("seed", self.seed, SEED)
        if self.peft not in METHODS:
            raise InputError(f"peft={self.peft!r}: choose one of {', '.join(METHODS)}")
        unknown = [d for d in self.datasets if d not in COMMONSENSE_DATASETS]
        if unknown or not self.datasets:
            raise InputError(f"datasets {unknown or '[]'}: choose among {', '.join(COMMONSENSE_DATASETS)}")
        check_method_names(list(self.methods))
        check_model_source(self.base)


def run_demo(cfg: DemoConfig, progress: bool = True, overwrite: bool = False) -> Path:
    """Run the demo; returns the path of the rendered report. A rerun continues where an
    interrupted one stopped (the warm-start from its last checkpoint, the evaluation from its
    caches); ``overwrite`` redoes every stage (see docs/run_directories.md)."""
    cfg.validate()
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(
            f"--out {str(out)!r} is a file, not a directory; give a directory for the demo's runs"
        )
    check_eval_dir(out / "eval", overwrite)
    with rundir.locked(out):
        return _run_demo(cfg, out, progress, overwrite)


def _run_demo(cfg: DemoConfig, out: Path, progress: bool, overwrite: bool) -> Path:
    timings: dict[str, float] = {}
    t0 = time.time()
    pool = load_commonsense("all", "train")
    pipe = run_pipeline(
        pool,
        out / f"commonsense-{cfg.peft}",
        WarmstartConfig(method=cfg.peft),
        base=cfg.base,
        n_train=cfg.n_train,
        n_calib=cfg.n_calib,
        seed=cfg.seed,
        choices=calibration_choices,
        source="commonsense:all",
        resume=not overwrite,  # the demo continues its own interrupted warm-start
        overwrite=overwrite,
        progress=progress,
    )
    timings["warmstart+calibrate"] = time.time() - t0

    tqa, mc_test = truthfulqa_mc_split(cfg.tqa_calib, cfg.tqa_test, cfg.seed)
    cs_test = [
        ex for name in cfg.datasets for ex in sample(load_commonsense(name, "test"), cfg.n_test, cfg.seed)
    ]

    t1 = time.time()
    run_eval(
        pipe.model,
        out / "eval",
        tasks=(COMMONSENSE, TRUTHFULQA_MC),
        method_names=cfg.methods,
        calib={COMMONSENSE: pipe.splits.calib, TRUTHFULQA_MC: tqa.calib},
        data={COMMONSENSE: cs_test, TRUTHFULQA_MC: mc_test},
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens,
        mc_prompt_style=cfg.mc_prompt_style,
        progress=progress,
        run_info={
            "command": "svdecode demo",
            "peft": cfg.peft,
            "n_train": cfg.n_train,
            "n_calib": cfg.n_calib,
            "n_test_per_dataset": cfg.n_test,
            "tqa_calib": cfg.tqa_calib,
            "tqa_test": cfg.tqa_test,
            "warmstart": pipe.warmstart_info.get("summary", {}),
        },
        overwrite=overwrite,
    )
    timings["evaluate"] = time.time() - t1
    # the demo's own report folder: re-rendered from its current results (a redone evaluation too)
    report = render_report([out / "eval" / "results.json"], out / "report", overwrite=True)
    timings["total"] = time.time() - t0
    print((out / "eval" / "results.md").read_text())
    print("timings (s): " + ", ".join(f"{k}={v:.0f}" for k, v in timings.items()))
    print(f"report: {report}")
    return report
