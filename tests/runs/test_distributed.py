"""Several processes under ``torchrun`` (gloo on CPU): the run directory is written once, the
warm-start trains data-parallel, calibration and evaluation give the one-process numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_model

from svdecode.eval.cache import ItemCache, merge_rank_caches, rank_cache_dir
from svdecode.runs import distributed, rundir
from svdecode.train.checkpoints import check_resumable

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def torchrun(args: list[str], cwd: Path, nproc: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    """``torchrun --standalone`` (a free port: tests may run side by side) with this checkout first."""
    return subprocess.run(
        _torchrun_cmd(args, nproc), cwd=cwd, env=_env(), text=True, capture_output=True, timeout=timeout
    )


def _torchrun_cmd(args: list[str], nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def _cli(*args: str) -> list[str]:
    return ["-m", "svdecode.cli", *args]


# -- one process: the helpers are no-ops; the pieces the launch relies on -------------------------
def test_without_a_launcher_everything_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert (distributed.world_size(), distributed.rank(), distributed.active()) == (1, 0, False)
    assert list(distributed.shard(5)) == [0, 1, 2, 3, 4]
    assert distributed.gather_sharded([7, 8], 2) == [7, 8] and distributed.on_main(lambda: 3) == 3
    with pytest.raises(KeyError):
        distributed.on_main(lambda: {}["x"])  # the main process's own error, unchanged


def test_gather_sharded_restores_the_order(monkeypatch):
    """shard() on rank r takes r, r + W, ...; gather_sharded interleaves the ranks back."""
    monkeypatch.setenv("WORLD_SIZE", "3")
    per_rank = []
    for r in range(3):
        monkeypatch.setenv("RANK", str(r))
        per_rank.append([f"item{i}" for i in distributed.shard(7)])
    monkeypatch.setattr(distributed, "gather", lambda value: per_rank)
    assert distributed.gather_sharded(per_rank[0], 7) == [f"item{i}" for i in range(7)]


def test_resume_on_another_process_count_needs_the_same_effective_batch(tmp_path, tokenizer, monkeypatch):
    from svdecode.train import checkpoints

    monkeypatch.setattr(checkpoints, "compare_fingerprints", lambda *a: None)
    model = make_model(len(tokenizer))
    old = {
        "config": {"batch_size": 2, "grad_accum": 1},
        "processes": 1,
        "data_sha256": "x",
        "tokenizer_size": 3,
    }
    old["base"] = "tiny"
    (tmp_path / "warmstart_request.json").write_text(json.dumps(old))
    check_resumable(tmp_path, {**old, "config": {"batch_size": 1, "grad_accum": 1}, "processes": 2}, model)
    check_resumable(tmp_path, {**old, "config": {"batch_size": 1, "grad_accum": 2}}, model)
    other = {**old, "config": {"batch_size": 2, "grad_accum": 1}, "processes": 2}
    with pytest.raises(ValueError, match=r"effective batch of 2 \(2 per device x 1 process.*gives 4"):
        check_resumable(tmp_path, other, model)


def test_rank_caches_are_merged_into_the_run_cache(tmp_path):
    fp = {"task": "t", "method": "m"}
    main = ItemCache(tmp_path / "t" / "m.jsonl", fp)
    main.add({"id": "a", "v": 1})
    other = ItemCache(rank_cache_dir(tmp_path, 1) / "t" / "m.jsonl", fp)
    other.add({"id": "b", "v": 2})
    other.add({"id": "a", "v": 99})  # already in the run's cache: kept as it was
    stale = ItemCache(
        rank_cache_dir(tmp_path, 2) / "t" / "m.jsonl", {"task": "t", "method": "other settings"}
    )
    stale.add({"id": "c", "v": 3})
    assert merge_rank_caches(tmp_path) == 1
    merged = ItemCache(tmp_path / "t" / "m.jsonl", fp)
    assert {k: r["v"] for k, r in merged.records.items()} == {"a": 1, "b": 2}
    assert not rank_cache_dir(tmp_path, 1).exists() and not rank_cache_dir(tmp_path, 2).exists()


# -- two processes -------------------------------------------------------------------------------
def test_two_process_calibration_equals_one_process(tmp_path):
    """The statistics pass shards the batches over two processes; mu, every objective, mu*_t and
    the choice scores equal the one-process pass (the same batches, so the same numbers)."""
    sys.path.insert(0, str(HERE))
    from dist_calibration_job import calibrations

    one = calibrations()
    proc = torchrun([str(HERE / "dist_calibration_job.py"), str(tmp_path / "two.json")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert (one["world"], two["world"]) == (1, 2)
    for key in ("batch2", "batch8"):
        a, b = one[key], two[key]
        assert a["n_tokens"] == b["n_tokens"] > 0 and a["guard"] == b["guard"]
        assert b["mu"] == pytest.approx(a["mu"], rel=1e-6, abs=1e-9)
        assert b["estimates"] == pytest.approx(a["estimates"], rel=1e-6, abs=1e-9)
        assert b["token_mu"] == pytest.approx(a["token_mu"], rel=1e-6, abs=1e-7)
        assert b["choice_scores"] == pytest.approx(a["choice_scores"], rel=1e-6, abs=1e-6)


# -- the command line under torchrun (slow: every launch starts two Python processes) -------------
def _ws_args(data_file, base_dir, out, *extra: str) -> list[str]:
    return ["warmstart", "--data", str(data_file), "--n-train", "8", "--n-calib", "4",
            "--base", str(base_dir), "--out", str(out), *extra]  # fmt: skip


def _adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


@pytest.mark.slow
def test_two_processes_batch_b_train_as_one_process_batch_2b(base_dir, data_file, tmp_path):
    """DDP on CPU: a step takes one batch per process, consecutive in the seeded data order, and the
    loss is averaged over the answer tokens of all of them; so with dropout off two processes at
    per-device batch 1 train the adapter one process trains at batch 2. (LoRA dropout, on by
    default, draws its masks per process: with it the adapters differ.)"""
    from svdecode.cli import main

    common = ("--max-steps", "4", "--lr", "1e-2", "--lora-dropout", "0")
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_ws_args(data_file, base_dir, one, *common, "--train-batch-size", "2")) == 0
    proc = torchrun(_cli(*_ws_args(data_file, base_dir, two, *common, "--train-batch-size", "1")), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("warm-started lora") == 1  # the main process reports, once
    info = json.loads((two / "warmstart.json").read_text())
    assert (info["processes"], info["effective_batch_size"], info["parallelism"]) == (2, 2, "ddp")
    assert json.loads((one / "warmstart.json").read_text())["effective_batch_size"] == 2
    a, b = _adapter(one), _adapter(two)
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max() < 1e-4, name  # padding to the batch's longest: fp32 noise
    assert max(float(t.abs().max()) for t in a.values()) > 0.05  # it did train
    assert not list(tmp_path.glob(".*.lock")) and rundir.verify(two) == []


@pytest.mark.slow
def test_a_killed_two_process_warmstart_resumes(base_dir, data_file, tmp_path):
    """SIGTERM to torchrun: one line (from the main process) names the checkpoint and the launch
    that resumes; resuming on two processes continues from it, on one process at the same
    per-device batch is refused (another effective batch), at twice the batch accepted."""
    out = tmp_path / "ws"
    args = _ws_args(data_file, base_dir, out, "--max-steps", "300", "--save-steps", "2")
    proc = subprocess.Popen(_torchrun_cmd(_cli(*args), 2), cwd=tmp_path, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    part = tmp_path / "ws.partial" / "checkpoints"
    deadline = time.time() + 300
    while not list(part.glob("checkpoint-*/svdecode_trainable.safetensors")):
        assert proc.poll() is None and time.time() < deadline, "no checkpoint before the run ended"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if "resume with:" in line]
    assert len(lines) == 1, err[-3000:]
    assert "torchrun --nproc_per_node=2 -m svdecode.cli warmstart" in lines[0] and "--resume" in lines[0]
    assert not out.exists() and part.parent.is_dir()

    refused = subprocess.run([sys.executable, *_cli(*args, "--resume")], cwd=tmp_path, env=_env(),
                             text=True, capture_output=True, timeout=300)  # fmt: skip
    assert refused.returncode == 2 and "effective batch of 2" in refused.stderr, refused.stderr[-2000:]
    done = torchrun(_cli(*args, "--resume"), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((out / "warmstart.json").read_text())
    assert info["steps"] == 300 and info["resumed_from_step"] >= 2 and info["processes"] == 2


@pytest.mark.slow
def test_another_launch_into_a_locked_directory_is_refused_once(base_dir, data_file, tmp_path):
    out = tmp_path / "ws"
    with rundir.locked(out):  # another svdecode writing there
        proc = torchrun(_cli(*_ws_args(data_file, base_dir, out, "--max-steps", "2")), tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.count("is being written by another svdecode process") == 1, proc.stderr[-3000:]
    assert "(process 1)" not in proc.stderr and not out.exists()


@pytest.mark.slow
def test_run_eval_and_calibrate_under_torchrun_equal_one_process(base_dir, data_file, tmp_path):
    """`svdecode run` on two processes: the directory `generate` uses, with the mu one process
    calibrates on the same adapter; `svdecode eval` on two processes: the one-process per-item
    scores and calibrated strengths; `svdecode calibrate` on two processes: the one-process mu."""
    from svdecode.cli import main

    steered = tmp_path / "steered"
    run = ["run", "--data", str(data_file), "--n-train", "8", "--n-calib", "6", "--base", str(base_dir)]
    proc = torchrun(_cli(*run, "--max-steps", "4", "--lr", "1e-2", "--out", str(steered)), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("ran: warmstart, calibrate") == 1
    saved = json.loads((steered / "steering_config.json").read_text())
    assert rundir.verify(steered) == [] and not (tmp_path / "steered.partial").exists()

    assert (
        main(
            ["generate", "--steered", str(steered), "--prompt", "Q: is 3 even?\nA:", "--max-new-tokens", "2"]
        )
        == 0
    )
    from svdecode.data import load_task, splits_from_manifest
    from svdecode.eval.choices import calibration_choices
    from svdecode.model.steered_model import SteeredModel

    model = SteeredModel.from_pretrained(steered, base=str(base_dir))  # one process, the same split
    calib = splits_from_manifest(
        load_task(str(data_file), "train"), json.loads((steered / "split_manifest.json").read_text())
    ).calib
    choices, metric = calibration_choices(calib)
    res = model.calibrate(calib, choices=choices, choice_metric=metric, progress=False)
    assert saved["mu"] == pytest.approx(res.mu, rel=1e-6, abs=1e-9)
    assert saved["calibration"]["estimates"] == pytest.approx(res.stats["estimates"], rel=1e-6, abs=1e-9)

    ev = ["eval", "--steered", str(steered), "--tasks", "truthfulqa_mc", "--tqa-calib", "4", "--limit", "5",
          "--methods", "peft,peft+svdecode"]  # fmt: skip
    assert main([*ev, "--out", str(tmp_path / "e1")]) == 0
    proc = torchrun(_cli(*ev, "--out", str(tmp_path / "e2")), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r1, r2 = (
        json.loads((tmp_path / e / "results.json").read_text())["tasks"]["truthfulqa_mc"]
        for e in ("e1", "e2")
    )
    assert r2["n_items"] == r1["n_items"] == 5 and not (tmp_path / "e2" / "cache" / ".rank1").exists()
    assert r2["methods"]["peft+svdecode"]["mu"] == pytest.approx(
        r1["methods"]["peft+svdecode"]["mu"], rel=1e-6
    )
    for method, items in r1["items"].items():
        other = {r["id"]: r for r in r2["items"][method]}
        for rec in items:
            assert other[rec["id"]]["mc2_scores"] == pytest.approx(rec["mc2_scores"], rel=1e-5, abs=1e-4)
            assert other[rec["id"]]["MC1"] == rec["MC1"]

    cal = [
        "calibrate",
        "--steered",
        str(steered),
        "--data",
        str(data_file),
        "--limit",
        "7",
        "--batch-size",
        "2",
    ]
    assert main([*cal, "--out", str(tmp_path / "c1")]) == 0
    proc = torchrun(_cli(*cal, "--out", str(tmp_path / "c2")), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("saved steering artifact") == 1
    c1, c2 = (json.loads((tmp_path / c / "steering_config.json").read_text()) for c in ("c1", "c2"))
    assert c2["mu"] == pytest.approx(c1["mu"], rel=1e-6, abs=1e-9)
    assert c2["calibration"]["quantiles"] == pytest.approx(c1["calibration"]["quantiles"], rel=1e-6, abs=1e-9)
