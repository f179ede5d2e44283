"""Faults only a real process shows (slow: each case starts Python a few times): a warm-start,
run or evaluation killed with SIGTERM, SIGINT or SIGKILL at a random moment and run again, and two
processes writing the same output directory at once. After the rerun the run directory is complete
and consistent, and nothing that was saved is lost."""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_faults import build_golden, consistent, eval_args, run_args

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> dict[str, Path]:
    return build_golden(tmp_path_factory.mktemp("golden"))


def _svdecode(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "svdecode.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _finish(args: list[str], cwd: Path) -> tuple[int, str]:
    proc = _svdecode(args, cwd)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def _rerun_until_done(args: list[str], err: str, cwd: Path) -> None:
    """What a user does after the kill: the printed resume command, else the same command, adding
    --resume when the refusal asks for it."""
    lines = [line for line in err.splitlines() if "resume with: " in line]
    if lines:
        args = shlex.split(lines[-1].split("resume with: ", 1)[1])[1:]
    rc, err = _finish(args, cwd)
    if rc == 2 and "--resume" in err and "--resume" not in args:
        rc, err = _finish([*args, "--resume"], cwd)
    assert rc == 0 and "Traceback" not in err, err


def _kill_during(args: list[str], cwd: Path, sig: int, started, delay: float) -> tuple[int, str]:
    """Start the command, wait until ``started()`` says its stage runs, then ``delay`` seconds more,
    and send ``sig`` (if it is still running)."""
    proc = _svdecode(args, cwd)
    deadline = time.time() + 180
    while started is not None and not started() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


# (command, stage, the sign that the stage runs, the longest delay after it): random points in it
STAGES = {
    "start": (None, 3.0),
    "warm-start": (lambda out: out.with_name(out.name + ".partial").is_dir(), 1.5),
    "calibration": (lambda out: (out / "warmstart.json").is_file(), 0.4),
    "evaluation": (lambda out: (out / "cache").is_dir(), 1.5),
}
KILLS = [
    ("run", stage, sig, seed)
    for stage in ("warm-start", "calibration")
    for sig in (signal.SIGTERM, signal.SIGKILL)
    for seed in (1, 2)
]
KILLS += [("eval", "evaluation", sig, seed) for sig in (signal.SIGTERM, signal.SIGKILL) for seed in (1, 2)]
KILLS += [("run", "start", signal.SIGINT, 3), ("eval", "start", signal.SIGTERM, 4)]


@pytest.mark.parametrize(
    ("what", "stage", "sig", "seed"), KILLS, ids=[f"{w}-{st}-{s.name}-{n}" for w, st, s, n in KILLS]
)
def test_killed_at_a_random_moment_then_rerun(what, stage, sig, seed, golden, tmp_path):
    out = tmp_path / what
    if what == "run":  # checkpoints every 3 of the 8 steps; every step logged
        args = run_args(golden, out, "--save-steps", "3", "--logging-steps", "1")
    else:
        args = eval_args(golden["run"], out)
    started, longest = STAGES[stage]
    delay = random.Random(seed).uniform(0.0, longest)
    rc, err = _kill_during(args, tmp_path, sig, started and (lambda: started(out)), delay)
    expected = {0, -signal.SIGKILL} if sig == signal.SIGKILL else {0, 128 + sig}
    if rc == -sig and sig != signal.SIGKILL:  # outside the command (starting, or exiting after it)
        assert not out.exists() or consistent(out) == [], err
    else:
        assert rc in expected, (rc, err)
    assert "Traceback" not in err, err
    if rc == 128 + sig:  # one line: what was saved, and the command that resumes
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"svdecode {what}: ") and "saved:" in last and "resume with: svdecode" in last
    _rerun_until_done(args, err, tmp_path)
    assert consistent(out) == []
    if what == "eval":
        got = json.loads((out / "results.json").read_text())["tasks"]["truthfulqa_mc"]["items"]
        want = json.loads((golden["eval"] / "results.json").read_text())["tasks"]["truthfulqa_mc"]["items"]
        assert {m: [r["id"] for r in v] for m, v in got.items()} == {
            m: [r["id"] for r in v] for m, v in want.items()
        }
    else:
        steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
        assert steps == list(range(1, 9))  # no step lost or repeated


def test_two_writers_on_one_output_directory(golden, tmp_path):
    out = tmp_path / "run"
    procs = [_svdecode(run_args(golden, out), tmp_path) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert any(rc == 0 for rc, _ in results), results
    for rc, err in results:
        assert rc in (0, 2) and "Traceback" not in err, err
        if rc == 2:
            assert "being written by another svdecode process" in err and "pid" in err
    assert consistent(out) == []


def test_a_killed_writer_leaves_a_stale_lock_that_is_named(golden, tmp_path):
    out = tmp_path / "run"
    proc = _svdecode(run_args(golden, out), tmp_path)
    lock = out.parent / f".{out.name}.svdecode.lock"
    deadline = time.time() + 120
    while not lock.exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert lock.exists()
    rc, err = _finish(run_args(golden, out), tmp_path)
    assert "taking over the stale lock" in err and str(lock) in err and f"pid {proc.pid}" in err
    if rc == 2:  # killed mid-warm-start: the refusal names --resume
        assert "--resume" in err
        rc, err = _finish([*run_args(golden, out), "--resume"], tmp_path)
    assert rc == 0, err
    assert consistent(out) == []
