"""One calibration-options object (CalibrationConfig) from the Python API to the record, and the
evaluation reusing the calibration ``svdecode run`` just made instead of a second pass."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import make_model, make_tokenizer

from svdecode.calibration import calibrate
from svdecode.calibration.config import CalibrationConfig, calibration_request
from svdecode.data import Example
from svdecode.errors import InputError
from svdecode.eval import run_eval
from svdecode.eval.choices import calibration_choices
from svdecode.train import WarmstartConfig
from svdecode.train.pipeline import SplitOptions, run_pipeline


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# boolq-like examples: their label options are the calibration's multiple-choice view
POOL = [
    Example(f"boolq/{i}", "boolq", f"Q: is {i} even?\nA:", f" the correct answer is {lab}", lab)
    for i, lab in ((i, "true" if i % 2 == 0 else "false") for i in range(16))
]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("calopts")
    tok = make_tokenizer()
    make_model(len(tok), seed=0).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    pipe = run_pipeline(
        POOL, root / "run", WarmstartConfig(lr=1e-2, max_steps=2), base=str(root / "base"),
        splits=SplitOptions(n_train=8, n_calib=6, n_test=2), calibration=CalibrationConfig(folds=3),
        choices=calibration_choices, progress=False,
    )  # fmt: skip
    return {"root": root, "pipe": pipe}


def count_passes(monkeypatch) -> list[int]:
    """Counts the calibration passes over the model (one per set of pairs or of choice options)."""
    calls: list[int] = []
    real = calibrate.collect_stats

    def counted(*args, **kw):
        calls.append(len(args[2]))
        return real(*args, **kw)

    monkeypatch.setattr(calibrate, "collect_stats", counted)
    return calls


def test_config_defaults_overrides_and_unknown_names():
    cfg = CalibrationConfig.resolve(CalibrationConfig(folds=3), {"objective": "mean", "estimator": None})
    assert (cfg.objective, cfg.folds, cfg.guard, cfg.bins) == ("mean", 3, True, 3)
    assert CalibrationConfig().replace(estimator="median").objective == "median"  # the old name
    with pytest.raises(TypeError, match="fold, trims"):
        CalibrationConfig().replace(trims=0.2, fold=3)
    with pytest.raises(InputError, match="folds"):
        CalibrationConfig(folds=1).validate()
    with pytest.raises(InputError, match="objective 'binned' needs at least 2 confidence bins"):
        CalibrationConfig(objective="binned", bins=1).validate()
    assert CalibrationConfig(objective="binned").validate().objective == "binned"
    assert CalibrationConfig(seed=4).record() == {
        "objective": "auto", "guard": True, "folds": 5, "bins": 3, "seed": 4,
    }  # fmt: skip


def test_calibrate_takes_a_config_and_keyword_overrides(run):
    model = run["pipe"].model
    pairs = [(ex.prompt, ex.answer) for ex in POOL[:6]]
    by_kwargs = model.calibrate(pairs, objective="mean", folds=3, progress=False)
    by_config = model.calibrate(pairs, CalibrationConfig(objective="mean", folds=3, progress=False))
    assert by_kwargs.mu == by_config.mu and by_kwargs.key == by_config.key
    assert by_kwargs.stats["objective"] == "mean" and model.steering.objective == "mean"
    overridden = model.calibrate(pairs, CalibrationConfig(objective="mean"), objective="nll", progress=False)
    assert overridden.objective == "nll"
    with pytest.raises(TypeError, match="unknown calibration option"):
        model.calibrate(pairs, fold=3)


def test_the_run_records_its_calibration_in_the_one_format(run):
    pipe = run["pipe"]
    from svdecode.runs import rundir

    recorded = rundir.stage_entry(pipe.out_dir, "calibration")["request"]
    choices, metric = calibration_choices(pipe.splits.calib)
    data = {"n": len(pipe.splits.calib), "ids_sha256": pipe.splits.manifest["sha256"]["calib"]}
    expected = calibration_request(
        CalibrationConfig(folds=3), data, rundir.adapter_digest(pipe.out_dir), choices, metric,
        alpha=0.1, method="svdecode",
    )  # fmt: skip
    assert recorded == expected
    assert set(recorded) == {
        "objective", "guard", "folds", "bins", "seed", "choices", "choice_metric", "alpha", "method", "data",
        "adapter_sha256",
    }  # fmt: skip


def _eval(model, out, pipe, **kw):
    test = [ex for ex in POOL if ex.id in {e.id for e in pipe.splits.test}]
    return run_eval(
        model, out, ("commonsense",), method_names=["peft", "peft+svdecode"],
        calib={"commonsense": pipe.splits.calib}, data={"commonsense": test}, mu_curves=False,
        progress=False, max_new_tokens=4, **kw,
    )  # fmt: skip


def test_eval_reuses_the_runs_calibration_instead_of_a_second_pass(run, monkeypatch, tmp_path):
    root = run["root"]
    # a fresh run in this process: its model holds the calibration it just made
    pipe = run_pipeline(
        POOL, root / "run2", WarmstartConfig(lr=1e-2, max_steps=2), base=str(root / "base"),
        splits=SplitOptions(n_train=8, n_calib=6, n_test=2), calibration=CalibrationConfig(folds=3),
        choices=calibration_choices, progress=False,
    )  # fmt: skip
    assert "calibrate" in pipe.stages_run and pipe.model.last_calibration is pipe.calibration
    passes = count_passes(monkeypatch)
    reused = _eval(pipe.model, tmp_path / "reused", pipe, folds=3)
    assert passes == []  # no calibration pass: the run's own was asked the same
    spec = reused["tasks"]["commonsense"]["methods"]["peft+svdecode"]
    assert spec["mu"] == pipe.calibration.mu
    assert (tmp_path / "reused" / spec["token_mu_file"]).is_file()

    # the same evaluation on a model that has not calibrated: one pass (pairs and their choices),
    # and the same calibration
    pipe.model.last_calibration = None
    fresh = _eval(pipe.model, tmp_path / "fresh", pipe, calibration=CalibrationConfig(folds=3))
    assert passes == [6, 12]  # 6 pairs, then 6 x 2 label options
    again = fresh["tasks"]["commonsense"]["methods"]["peft+svdecode"]
    assert again["mu"] == spec["mu"] and again["calibration"]["estimates"] == spec["calibration"]["estimates"]
    assert again["calibration"]["curve"] == spec["calibration"]["curve"]

    # another request (other folds) is another calibration: it runs
    pipe.model.last_calibration = pipe.calibration
    passes.clear()
    _eval(pipe.model, tmp_path / "other", pipe, folds=2)
    assert passes == [6, 12]
