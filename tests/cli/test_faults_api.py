"""Fault injection against the Python API: every public entry point checks its arguments before any
model work and raises the library's own error naming the argument; directories it may write are
unchanged after a refusal. (The command-line table is test_faults.py.)"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_model, make_tokenizer
from test_faults import ROWS, snapshot

from svdecode import checks
from svdecode.data import DataError, Example, sample
from svdecode.errors import InputError, SvdecodeError
from svdecode.model.config import ConfigError, SteeringConfig
from svdecode.model.fingerprint import BaseMismatchError
from svdecode.model.loading import load_base, load_peft
from svdecode.model.steered_model import SteeredModel
from svdecode.runs import rundir
from svdecode.steering import steer_logits
from svdecode.train import WarmstartConfig, WarmstartError, warmstart
from svdecode.train.pipeline import run_pipeline

LONG = "Q: " + "the sky is blue " * 40  # 363 tokens, more than 256 positions
POOL = [Example(f"t/{i}", "t", r["prompt"], r["answer"]) for i, r in enumerate(ROWS)]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("api")
    tok = make_tokenizer()
    for name, seed in (("base", 0), ("base2", 1)):
        make_model(len(tok), seed=seed).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    cfg = WarmstartConfig(lr=1e-2, max_steps=2)
    run_pipeline(POOL, root / "run", cfg, base=str(root / "base"), n_train=8, n_calib=4, progress=False)
    other = root / "other"
    run_pipeline(POOL, other, cfg, base=str(root / "base"), n_train=8, n_calib=4, seed=1, progress=False)
    model = SteeredModel.from_pretrained(root / "run")
    return {"root": root, "model": model, "tok": tok, "run": root / "run", "other": other}


def _ids(tok, text: str = "Q: is 3 even?\nA:") -> dict[str, torch.Tensor]:
    return dict(tok(text, return_tensors="pt"))


# fmt: off
API_CASES: list[tuple[str, Callable[[dict], Any], type[Exception], str]] = [
    ("SteeredModel.generate num_beams=0", lambda w: w["model"].generate(**_ids(w["tok"]), num_beams=0),
     InputError, "num_beams"),
    ("SteeredModel.generate top_p=0", lambda w: w["model"].generate(**_ids(w["tok"]), do_sample=True, top_p=0.0),
     InputError, "top_p"),
    ("SteeredModel.generate temperature=-1", lambda w: w["model"].generate(**_ids(w["tok"]), do_sample=True,
     temperature=-1.0), InputError, "temperature"),
    ("SteeredModel.generate num_return_sequences=3 greedy", lambda w: w["model"].generate(**_ids(w["tok"]),
     num_return_sequences=3), InputError, "num_return_sequences"),
    ("SteeredModel.generate max_new_tokens=True", lambda w: w["model"].generate(**_ids(w["tok"]),
     max_new_tokens=True), InputError, "max_new_tokens"),
    ("SteeredModel.generate input beyond the context", lambda w: w["model"].generate(**_ids(w["tok"], LONG),
     max_new_tokens=2), InputError, "context"),
    ("generate_text batch_size=0", lambda w: w["model"].generate_text(["a"], batch_size=0), InputError, "batch_size"),
    ("generate_text a prompt beyond the context", lambda w: w["model"].generate_text([LONG], max_new_tokens=2),
     InputError, "truncate=True"),
    ("generate_text a non-string prompt", lambda w: w["model"].generate_text([3]), InputError, "prompt 1"),
    ("generate_text max_new_tokens beyond the context", lambda w: w["model"].generate_text(["a"],
     max_new_tokens=256), InputError, "max_new_tokens=256"),
    ("score batch_size=0", lambda w: w["model"].score(["a"], [" b"], batch_size=0), InputError, "batch_size"),
    ("score max_length=0", lambda w: w["model"].score(["a"], [" b"], max_length=0), InputError, "max_length"),
    ("score max_length beyond the context", lambda w: w["model"].score(["a"], [" b"], max_length=4096),
     InputError, "context"),
    ("score a pair beyond the context", lambda w: w["model"].score([LONG], [" b"]), InputError, "pair 1"),
    ("calibrate estimator='mode'", lambda w: w["model"].calibrate([("a", " b")], estimator="mode", progress=False),
     ValueError, "unknown objective"),
    ("calibrate trim=0.7", lambda w: w["model"].calibrate([("a", " b")], trim=0.7, progress=False), InputError,
     "trim"),
    ("calibrate batch_size=0", lambda w: w["model"].calibrate([("a", " b")], batch_size=0, progress=False),
     InputError, "batch_size"),
    ("run_eval alpha=1.5", lambda w: _run_eval(w, alpha=1.5), InputError, "alpha"),
    ("run_eval estimator='mode'", lambda w: _run_eval(w, estimator="mode"), InputError, "objective"),
    ("calibrate a pair beyond the context", lambda w: w["model"].calibrate([(LONG, " b")], progress=False),
     InputError, "pair 1"),
    ("save_pretrained into another run", lambda w: w["model"].save_pretrained(w["other"]), rundir.RunDirError,
     "holds another adapter"),
    ("save_pretrained onto a file", lambda w: w["model"].save_pretrained(w["root"] / "base" / "config.json"),
     InputError, "is a file"),
    ("from_pretrained a missing directory", lambda w: SteeredModel.from_pretrained(w["root"] / "nope"), InputError,
     "does not exist"),
    ("from_pretrained onto another base", lambda w: SteeredModel.from_pretrained(w["run"], base=str(w["root"] /
     "base2")), BaseMismatchError, "--force (force=True)"),
    ("load_peft onto another base", lambda w: load_peft(w["run"], str(w["root"] / "base2")), BaseMismatchError,
     "other weights"),
    ("load_base a missing local path", lambda w: load_base("./no/such/model"), InputError, "does not exist"),
    ("SteeringConfig mu=True", lambda w: SteeringConfig(mu=True), ConfigError, "'mu'"),
    ("SteeringConfig mu=1e39 (beyond fp32)", lambda w: SteeringConfig(mu=1e39), ConfigError,
     "fp32 steering step"),
    ("steering.override mu=1e300", lambda w: SteeringConfig().override(mu=1e300), ConfigError, "fp32"),
    ("steer_logits mu=1e39", lambda w: steer_logits(torch.zeros(2, 5), torch.zeros(2, 5), 1e39), ValueError,
     "magnitude at most 1e+30"),
    ("calibrate bins=100000", lambda w: w["model"].calibrate([("a", " b")], bins=100_000, progress=False),
     InputError, "bins"),
    ("SteeringConfig alpha=2", lambda w: SteeringConfig(alpha=2.0), ConfigError, "'alpha'"),
    ("SteeringConfig method='x'", lambda w: SteeringConfig(method="x"), ConfigError, "'method'"),
    ("SteeringConfig.from_json without mu", lambda w: SteeringConfig.from_json(
     {k: v for k, v in SteeringConfig().to_json().items() if k != "mu"}, "f.json"), ConfigError, "f.json"),
    ("run_eval limit=0", lambda w: _run_eval(w, limit=0), InputError, "limit"),
    ("run_eval batch_size=0", lambda w: _run_eval(w, batch_size=0), InputError, "batch_size"),
    ("run_eval unknown method", lambda w: _run_eval(w, method_names=["peft", "nope"]), InputError, "nope"),
    ("run_eval into a run directory", lambda w: _run_eval(w, out=w["run"]), rundir.RunDirError, "model run"),
    ("run_pipeline n_train=0", lambda w: _pipeline(w, n_train=0), InputError, "n_train"),
    ("run_pipeline n_calib=0.0", lambda w: _pipeline(w, n_calib=0.0), InputError, "n_calib"),
    ("run_pipeline objective='mode'", lambda w: _pipeline(w, objective="mode"), InputError, "objective"),
    ("run_pipeline alpha=2", lambda w: _pipeline(w, alpha=2.0), InputError, "alpha"),
    ("run_pipeline a missing local base", lambda w: _pipeline(w, base="./no/such/model"), InputError,
     "does not exist"),
    ("run_pipeline other options into a run", lambda w: _pipeline(w, out=w["run"], objective="median"),
     rundir.RunDirError, "objective"),
    ("warmstart seed=-1", lambda w: warmstart(POOL, w["root"] / "ws", WarmstartConfig(seed=-1)), WarmstartError,
     "seed"),
    ("DemoConfig n_train=0", lambda w: _demo(n_train=0), InputError, "n_train"),
    ("DemoConfig an unknown dataset", lambda w: _demo(datasets=("nope",)), InputError, "nope"),
    ("DemoConfig an unknown method", lambda w: _demo(methods=("peft", "nope")), InputError, "nope"),
    ("check_generation top_k=1.5", lambda w: checks.check_generation({"top_k": 1.5}), InputError, "top_k"),
    ("sample n=0", lambda w: sample(POOL, 0), DataError, "positive"),
]
# fmt: on


def _run_eval(w: dict, out: Path | None = None, **kw: Any):
    from svdecode.eval import run_eval

    kw.setdefault("method_names", ["peft"])
    return run_eval(w["model"], out or w["root"] / "eval", data={"truthfulqa_mc": []}, **kw)


def _pipeline(w: dict, out: Path | None = None, **kw: Any):
    args: dict[str, Any] = dict(base=str(w["root"] / "base"), n_train=8, n_calib=4, progress=False)
    cfg = WarmstartConfig(lr=1e-2, max_steps=2)
    return run_pipeline(POOL, out or w["root"] / "pipe", cfg, **(args | kw))


def _demo(**kw: Any) -> None:
    from svdecode.cli.demo import DemoConfig

    DemoConfig(**kw).validate()


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_fault(case, world):
    _, call, error, says = case
    dirs = [world["run"], world["other"], *(world["root"] / n for n in ("eval", "pipe", "ws"))]
    before = {d: snapshot(d) for d in dirs}
    with pytest.raises(error) as info:
        call(world)
    assert says in str(info.value)
    assert isinstance(info.value, (SvdecodeError, ValueError))
    assert {d: snapshot(d) for d in dirs} == before


def test_api_ways_out_work(world, tmp_path):
    """The ways out the errors name: force=True, overwrite=True, an empty prompt."""
    model = SteeredModel.from_pretrained(world["run"], base=str(world["root"] / "base2"), force=True)
    assert model.generate_text([""], max_new_tokens=2)[0] is not None
    target = tmp_path / "other"
    shutil.copytree(world["other"], target)
    world["model"].save_pretrained(target, overwrite=True)
    assert rundir.adapter_digest(target) == rundir.adapter_digest(world["run"])
    assert not (target / "warmstart.json").exists() and rundir.verify(target) == []
    cfg = json.loads((target / "steering_config.json").read_text())
    assert cfg["mu"] == world["model"].steering.mu


def test_a_peft_model_the_caller_loaded_saves_into_its_own_folder(world, tmp_path):
    """The README flow: PeftModel.from_pretrained(base, dir) -> SteeredModel.from_peft -> save into
    the same dir keeps the adapter (its weights are recognised) and records the calibration."""
    from peft import PeftModel

    target = tmp_path / "run"
    shutil.copytree(world["run"], target)
    before = rundir.adapter_digest(target)
    base, tok = load_base(str(world["root"] / "base"))
    model = SteeredModel.from_peft(PeftModel.from_pretrained(base, str(target)), tok, mu=1.5)
    model.save_pretrained(target)
    assert rundir.adapter_digest(target) == before and rundir.verify(target) == []
    assert json.loads((target / "steering_config.json").read_text())["mu"] == 1.5
    other = SteeredModel.from_peft(PeftModel.from_pretrained(load_base(str(world["root"] / "base"))[0],
                                                             str(world["other"])), tok)  # fmt: skip
    with pytest.raises(rundir.RunDirError, match="holds another adapter"):
        other.save_pretrained(target)
