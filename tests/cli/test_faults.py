"""Fault injection against the command line and the Python API: bad flags, paths, data files,
artifacts, adapter and run directories, interrupts and concurrent writers, offline on the tiny
models of conftest.

Every case in CASES runs ``svdecode.cli.main`` in-process and asserts the exit code, that the
message names the input, that no traceback reached the user, and that every run directory the
case can touch is either unchanged (always, for a refused input) or complete and consistent
afterwards (every stage of its manifest finished, its files at their recorded hashes, no lock
left). Interrupt cases raise KeyboardInterrupt (or SIGTERM's Terminated) at chosen points, then
run the command the one-line message prints. API_CASES call the Python API with bad arguments.
The subprocess kills (SIGTERM / SIGINT / SIGKILL at random moments) and two real concurrent
writers are in test_faults_kill.py, under the slow marker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_model, make_tokenizer

from svdecode.cli import main
from svdecode.cli.interrupts import Terminated
from svdecode.model.config import CONFIG_NAME
from svdecode.runs import rundir

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run_v0"
ROWS = [{"prompt": f"Q: is {i} even?\nA:", "answer": " yes" if i % 2 == 0 else " no"} for i in range(14)]
LONG = "Q: " + "the sky is blue " * 40  # 363 tokens: more than the tiny models' 256 positions


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> dict[str, Path]:
    """Bases, a data file and finished run directories, made once; each case works on copies."""
    return build_golden(tmp_path_factory.mktemp("golden"))


def build_golden(root: Path) -> dict[str, Path]:
    tok = make_tokenizer()
    models = {"base": make_model(len(tok)), "base2": make_model(len(tok), seed=1),
              "base_vocab": make_model(len(tok) + 7), "base_layers": make_model(len(tok))}  # fmt: skip
    with torch.no_grad():  # the same model but for one layer: same shapes, same embeddings
        weight = models["base_layers"].model.layers[0].self_attn.q_proj.weight
        weight.add_(1e-3 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    for name, model in models.items():
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    data = root / "task.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    g = {name: root / name for name in models} | {"root": root, "data": data}
    assert main(run_args(g, root / "run")) == 0
    ws_args = ["warmstart", "--data", str(data), "--n-train", "6", "--n-calib", "4", "--seed", "1"]
    assert main([*ws_args, "--base", str(g["base"]), "--out", str(root / "A"), "--max-steps", "2"]) == 0
    assert main(eval_args(root / "run", root / "eval")) == 0
    return g | {"run": root / "run", "A": root / "A", "eval": root / "eval"}


def run_args(g: Any, out: Path, *extra: str) -> list[str]:
    d = g if isinstance(g, dict) else vars(g)
    return ["run", "--data", str(d["data"]), "--n-train", "8", "--n-calib", "4", "--base", str(d["base"]),
            "--lr", "1e-2", "--out", str(out), *extra]  # fmt: skip


def eval_args(model: Path, out: Path, *extra: str, src: str = "--steered") -> list[str]:
    return ["eval", src, str(model), "--tasks", "truthfulqa_mc", "--limit", "2", "--tqa-calib", "4",
            "--mc-prompt", "plain", "--methods", "peft,peft+svdecode", "--batch-size", "4", "--out", str(out),
            *extra]  # fmt: skip


class Ctx:
    """One case's world: copies of the golden run directories (and of the pre-manifest fixture)."""

    def __init__(self, golden: dict[str, Path], tmp: Path):
        self.tmp = tmp
        self.base, self.base2, self.base_vocab, self.base_layers, self.data = (
            golden[k] for k in ("base", "base2", "base_vocab", "base_layers", "data")
        )
        for name in ("run", "A", "eval"):
            shutil.copytree(golden[name], tmp / name)
        shutil.copytree(FIXTURE / "adapter", tmp / "legacy")
        shutil.copytree(FIXTURE / "eval", tmp / "legacy_eval")
        self.run, self.A, self.eval = tmp / "run", tmp / "A", tmp / "eval"
        self.legacy, self.legacy_eval = tmp / "legacy", tmp / "legacy_eval"
        self.new = tmp / "new"  # an output directory that does not exist yet
        self.extra: dict[str, Any] = {}

    def dirs(self) -> list[Path]:
        named = [self.run, self.A, self.eval, self.legacy, self.legacy_eval, self.new]
        return named + [d.with_name(d.name + ".partial") for d in named]

    def file(self, name: str, text: str | bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
        return path

    def edit_config(self, change: Callable[[dict], Any], raw: str | None = None) -> None:
        path = self.run / CONFIG_NAME
        data = json.loads(path.read_text())
        change(data)
        path.write_text(raw if raw is not None else json.dumps(data))


def snapshot(d: Path) -> dict[str, str] | None:
    if not d.exists():
        return None
    return {str(p.relative_to(d)): rundir.sha256_file(p) for p in sorted(d.rglob("*")) if p.is_file()}


def consistent(d: Path) -> list[str]:
    """Problems of a run directory after a command: every stage complete, every output at its
    recorded hash, no lock file left, no unfinished warm-start beside it."""
    if rundir.read_manifest(d) is None:
        return [f"{d} has no manifest"]
    problems = rundir.verify(d)
    if rundir.lock_path(d).exists():
        problems.append(f"lock file {rundir.lock_path(d)} left behind")
    if d.with_name(d.name + ".partial").exists():
        problems.append(f"{d}.partial left behind")
    return problems


# ------------------------------------------------------------------------------------- the table
@dataclasses.dataclass(frozen=True)
class Case:
    """``argv(ctx)``; the exit code; substrings the message must hold (str or ``f(ctx)``) and must
    not; ``setup(ctx)`` breaks something first; ``around(ctx)`` is a context manager held during
    the command; ``inject(ctx, monkeypatch)`` arms an interrupt; ``after(ctx, out, err)`` checks
    more (e.g. runs the resume command)."""

    id: str
    argv: Callable[[Ctx], list[str]]
    rc: int
    says: tuple[Any, ...] = ()
    setup: Callable[[Ctx], Any] | None = None
    around: Callable[[Ctx], Any] | None = None
    inject: Callable[[Ctx, Any], Any] | None = None
    after: Callable[[Ctx, str, str], Any] | None = None
    category: str = "flags"
    never: tuple[str, ...] = ()


def gen(c: Ctx, *extra: str, src: str = "run") -> list[str]:
    return ["generate", "--steered", str(getattr(c, src)), "--prompt", "Q: is 3 even?\nA:", "--max-new-tokens", "2",
            *extra]  # fmt: skip


def ws(c: Ctx, *extra: str, out: Path | None = None) -> list[str]:
    return ["warmstart", "--data", str(c.data), "--n-train", "6", "--n-calib", "4", "--base", str(c.base),
            "--out", str(out or c.new), "--max-steps", "4", "--save-steps", "2", "--logging-steps", "1",
            *extra]  # fmt: skip


def cal(c: Ctx, *extra: str, src: tuple[str, str] = ("--steered", "run")) -> list[str]:
    return ["calibrate", src[0], str(getattr(c, src[1])), "--data", str(c.data), "--limit", "4", *extra]


def case(category: str, id: str, argv, rc: int = 2, *says: Any, **kw: Any) -> Case:
    return Case(id, argv, rc, says, category=category, **kw)


def prompt_file(c: Ctx, name: str, text: str | bytes, *extra: str) -> list[str]:
    return ["generate", "--steered", str(c.run), "--prompt-file", str(c.file(name, text)), *extra]


def data(c: Ctx, name: str, text: str, *extra: str) -> list[str]:
    return ["warmstart", "--data", str(c.file(name, text)), "--base", str(c.base), "--out", str(c.new),
            "--n-calib", "0", *extra]  # fmt: skip


def artifact(id: str, change: Callable[[dict], Any], *says: str, raw: str | None = None) -> Case:
    return case("artifacts", id, gen, 2, CONFIG_NAME, *says, setup=lambda c: c.edit_config(change, raw))


def _truncate_weights(c: Ctx) -> None:
    path = c.A / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:50])


def _changed_and_overwritten(c: Ctx, out: str, err: str) -> None:
    assert "ran: warmstart, calibrate" in out and "mu_bar" in out
    stages = rundir.read_manifest(c.run)["stages"]
    assert stages["warmstart"]["request"]["config"]["lr"] == 1e-3
    assert stages["warmstart"]["request"]["data"]["num_examples"] == 10
    assert stages["calibration"]["request"]["objective"] == "median"
    saved = json.loads((c.run / CONFIG_NAME).read_text())
    assert saved["calibration"]["selection"]["chosen"] == "median" and saved["objective"] in ("median", "off")


def _adopted_other_run(c: Ctx, out: str, err: str) -> None:
    assert rundir.adapter_digest(c.run) == rundir.adapter_digest(c.A)
    for stale in ("warmstart.json", "split_manifest.json", "train_log.jsonl"):
        assert not (c.run / stale).exists(), f"{stale} of the replaced run left behind"
    assert set(rundir.read_manifest(c.run)["stages"]) == {"calibration"}


def _reused_calibration(c: Ctx, out: str, err: str) -> None:
    before = snapshot(c.new)
    assert main(cal(c, "--out", str(c.new), src=("--adapter", "A"))) == 0
    assert snapshot(c.new) == before  # the matching calibration was reused, nothing rewritten


def _says_in_stdout(text: str) -> Callable[[Ctx, str, str], None]:
    def check(c: Ctx, out: str, err: str) -> None:
        assert text in out, out

    return check


@contextlib.contextmanager
def _interrupt_training(at_call: int) -> Iterator[None]:
    from transformers import Trainer

    original, calls = Trainer.training_step, {"n": 0}

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt()
        return original(self, *a, **k)

    Trainer.training_step = step
    try:
        yield
    finally:
        Trainer.training_step = original


def _interrupted_warmstart(c: Ctx) -> None:
    with _interrupt_training(at_call=3):  # after the checkpoint at step 2
        assert main(ws(c)) == 130


def _steps_complete(c: Ctx, out: str, err: str) -> None:
    steps = [json.loads(line)["step"] for line in (c.new / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


# -- concurrent writers: another process holds the lock (flock), or left a stale lock file
HOLDER = (
    "import fcntl, json, os, socket, sys, time\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "os.write(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname(), 'since': 'now',"
    " 'command': 'svdecode run (holder)'}).encode())\n"
    "print('held', flush=True)\n"
    "time.sleep(300)\n"
)


@contextlib.contextmanager
def lock_held_elsewhere(c: Ctx, directory: Path) -> Iterator[None]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(rundir.lock_path(directory))],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "held"
        c.extra["holder"] = proc.pid
        yield
    finally:
        proc.kill()
        proc.wait()
        rundir.lock_path(directory).unlink(missing_ok=True)


def _stale_lock(c: Ctx, host: str | None = None) -> None:
    holder = {
        "pid": 999_999_999,
        "host": host or socket.gethostname(),
        "since": "then",
        "command": "svdecode run",
    }
    rundir.lock_path(c.run).write_text(json.dumps(holder))


def locked(id: str, argv, directory: str) -> Case:
    return case("concurrency", id, argv, 2, "being written by another svdecode process",
                lambda c: f"pid {c.extra['holder']}", ".svdecode.lock",
                around=lambda c: lock_held_elsewhere(c, getattr(c, directory)))  # fmt: skip


# -- interrupts: in-process, at chosen points
def _raise_at(target: str, after: int = 0, exc: type[BaseException] = KeyboardInterrupt):
    """An ``inject`` making ``module:attr`` (or ``module:Class.attr``) raise ``exc`` on call
    ``after + 1``; the original comes back then, so the resumed command runs normally."""

    def inject(c: Ctx, monkeypatch) -> None:
        module, _, attr = target.rpartition(":")
        owner = __import__(module, fromlist=["_"])
        if "." in attr:
            cls, attr = attr.split(".")
            owner = getattr(owner, cls)
        original, calls = getattr(owner, attr), {"n": 0}

        def wrapper(*a, **k):
            calls["n"] += 1
            if calls["n"] > after:
                monkeypatch.setattr(owner, attr, original)
                raise exc()
            return original(*a, **k)

        monkeypatch.setattr(owner, attr, wrapper)

    return inject


def _resume(c: Ctx, out: str, err: str) -> None:
    """The message is one line naming what was saved and the command; running it completes."""
    lines = [line for line in err.splitlines() if line.startswith("svdecode ")]
    assert len(lines) == 1 and "saved:" in lines[0], err
    command = shlex.split(lines[0].split("resume with: ", 1)[1])
    assert command[0] == "svdecode" and main(command[1:]) == 0


def _resume_eval_matches(c: Ctx, out: str, err: str) -> None:
    _resume(c, out, err)
    golden = json.loads((c.tmp / "golden_results.json").read_text())["tasks"]["truthfulqa_mc"]["items"]
    now = json.loads((c.eval / "results.json").read_text())["tasks"]["truthfulqa_mc"]["items"]
    for method, records in golden.items():  # same items and scores (resumed batches pad differently)
        for want, got in zip(records, now[method], strict=True):
            assert (got["id"], got["mc1_labels"]) == (want["id"], want["mc1_labels"])
            assert got["mc1_scores"] == pytest.approx(want["mc1_scores"], rel=1e-5)


def _fresh_eval(c: Ctx) -> None:
    shutil.copy(c.eval / "results.json", c.tmp / "golden_results.json")
    shutil.rmtree(c.eval)


def _report(c: Ctx, results: Path, *extra: str) -> list[str]:
    return ["report", str(results), "--out", str(c.new), *extra]


def _other_results(c: Ctx) -> Path:
    """A report of the golden evaluation in c.new, and a copy of its results elsewhere."""
    assert main(_report(c, c.eval)) == 0
    (c.tmp / "other").mkdir()
    return Path(shutil.copy(c.eval / "results.json", c.tmp / "other" / "results.json"))


def _only_the_new_report(c: Ctx, out: str, err: str) -> None:
    entry = rundir.stage_entry(c.new, "report")
    assert [r["path"] for r in entry["request"]["results"]] == [str(c.tmp / "other" / "results.json")]
    assert sorted(p.name for p in c.new.iterdir() if not p.name.startswith(".")) == sorted(
        [rundir.MANIFEST_NAME, *entry["outputs"]])  # fmt: skip


def _never_serve(c: Ctx, monkeypatch) -> None:
    """A serve case that is not refused would start a server and never return: fail instead."""

    def serve(*a, **k):
        raise AssertionError("svdecode serve started although its flags are invalid")

    monkeypatch.setattr("svdecode.integrations.server.app.serve", serve)


def _limit_recorded(c: Ctx, out: str, err: str) -> None:
    assert json.loads((c.new / "results.json").read_text())["config"]["limit"] == 2
    assert "limit 2," in (c.new / "results.md").read_text()


_rng = random.Random(13)  # "random points", reproducibly
_STEPS = sorted(_rng.sample(range(1, 5), 2))
_ITEMS = sorted(_rng.sample(range(0, 4), 2))

# fmt: off
CASES: list[Case] = [
    # -- command-line numbers: refused at parse time, before anything loads
    case("flags", "generate --num-beams 0", lambda c: gen(c, "--num-beams", "0"), 2, "--num-beams", ">= 1", "got 0"),
    case("flags", "generate --num-beams two", lambda c: gen(c, "--num-beams", "two"), 2, "--num-beams", "two"),
    case("flags", "generate --max-new-tokens 0", lambda c: gen(c, "--max-new-tokens", "0"), 2, "--max-new-tokens"),
    case("flags", "generate --max-new-tokens -3", lambda c: gen(c, "--max-new-tokens", "-3"), 2, "--max-new-tokens"),
    case("flags", "generate --temperature 0", lambda c: gen(c, "--sample", "--temperature", "0"), 2, "--temperature", "> 0"),
    case("flags", "generate --temperature nan", lambda c: gen(c, "--sample", "--temperature", "nan"), 2, "--temperature"),
    case("flags", "generate --top-p 0", lambda c: gen(c, "--sample", "--top-p", "0"), 2, "--top-p", "(0, 1]"),
    case("flags", "generate --top-p 1.5", lambda c: gen(c, "--sample", "--top-p", "1.5"), 2, "--top-p", "1.5"),
    case("flags", "generate --top-k -1", lambda c: gen(c, "--sample", "--top-k", "-1"), 2, "--top-k", ">= 0"),
    case("flags", "generate --batch-size 0", lambda c: gen(c, "--batch-size", "0"), 2, "--batch-size"),
    case("flags", "generate --seed -1", lambda c: gen(c, "--seed", "-1"), 2, "--seed"),
    case("flags", "generate --mu nan", lambda c: gen(c, "--mu", "nan"), 2, "--mu", "finite"),
    case("flags", "generate --mu inf", lambda c: gen(c, "--mu", "inf"), 2, "--mu"),
    case("flags", "generate --mu 1e39 (finite, beyond fp32)", lambda c: gen(c, "--mu", "1e39"), 2, "--mu",
         "magnitude at most 1e+30", "fp32"),
    case("flags", "generate --mu 1e300", lambda c: gen(c, "--mu", "1e300"), 2, "--mu", "fp32"),
    case("flags", "generate --mu -1e31", lambda c: gen(c, "--mu=-1e31"), 2, "--mu", "fp32"),
    case("flags", "generate --lam abc", lambda c: gen(c, "--lam", "abc"), 2, "--lam", "abc",
         never=("_lam",)),
    case("flags", "serve --mu 1e300", lambda c: ["serve", str(c.run), "--mu", "1e300"], 2, "--mu", "fp32",
         inject=_never_serve),
    case("flags", "serve --port -1", lambda c: ["serve", str(c.run), "--port", "-1"], 2, "--port", "[1, 65535]",
         inject=_never_serve),
    case("flags", "serve --alpha 2", lambda c: ["serve", str(c.run), "--alpha", "2"], 2, "--alpha", "[0, 1]",
         inject=_never_serve),
    case("flags", "calibrate --confidence-bins 100000", lambda c: cal(c, "--confidence-bins", "100000"), 2,
         "--confidence-bins", "64"),
    case("flags", "generate --alpha 1.5", lambda c: gen(c, "--alpha", "1.5"), 2, "--alpha", "[0, 1]"),
    case("flags", "generate --lam inf", lambda c: gen(c, "--lam", "inf"), 2, "--lam"),
    case("flags", "generate --stop ''", lambda c: gen(c, "--stop", ""), 2, "--stop"),
    case("flags", "generate without a model", lambda c: ["generate", "--prompt", "hi"], 2, "--steered", "--adapter"),
    case("flags", "generate without a prompt", lambda c: ["generate", "--steered", str(c.run)], 2, "--prompt"),
    case("flags", "warmstart --n-train 0", lambda c: ws(c, "--n-train", "0"), 2, "--n-train", ">= 1", "got 0"),
    case("flags", "warmstart --lr 0", lambda c: ws(c, "--lr", "0"), 2, "--lr", "lr=0"),
    case("flags", "warmstart --lr -1e-3", lambda c: ws(c, "--lr", "-1e-3"), 2, "--lr"),
    case("flags", "warmstart --train-seed -1", lambda c: ws(c, "--train-seed", "-1"), 2, "--train-seed"),
    case("flags", "warmstart --max-steps 0", lambda c: ws(c, "--max-steps", "0"), 2, "--max-steps"),
    case("flags", "warmstart --fraction 2", lambda c: ["warmstart", "--data", str(c.data), "--out", str(c.new),
         "--fraction", "2"], 2, "--fraction"),
    case("flags", "warmstart --lora-r 0", lambda c: ws(c, "--lora-r", "0"), 2, "--lora-r"),
    case("flags", "warmstart --peft ia3 --lora-r 4", lambda c: ws(c, "--peft", "ia3", "--lora-r", "4"), 2, "--lora-r", "lora"),
    case("flags", "warmstart --n-calib 100 of 14 rows", lambda c: ws(c, "--n-calib", "100"), 2, "n_calib", "only 14"),
    case("flags", "run --n-calib 0", lambda c: run_args(c, c.new, "--n-calib", "0"), 2, "--n-calib"),
    case("flags", "run --n-test -1", lambda c: run_args(c, c.new, "--n-test", "-1"), 2, "--n-test"),
    case("flags", "run --limit 0", lambda c: run_args(c, c.new, "--limit", "0"), 2, "--limit"),
    case("flags", "run --n-train 20 of 14 rows", lambda c: run_args(c, c.new, "--n-train", "20"), 2, "only 14"),
    case("flags", "eval --limit 0", lambda c: eval_args(c.run, c.new, "--limit", "0"), 2, "--limit"),
    case("flags", "eval --tqa-calib 0", lambda c: eval_args(c.run, c.new, "--tqa-calib", "0"), 2, "--tqa-calib"),
    case("flags", "eval --methods alpha=2", lambda c: eval_args(c.run, c.new, "--methods", "peft,alpha=2"), 2,
         "alpha=2", "[0, 1]"),
    case("flags", "eval --methods nope", lambda c: eval_args(c.run, c.new, "--methods", "peft,nope"), 2, "nope"),
    case("flags", "eval --warmstart-fraction 0", lambda c: eval_args(c.run, c.new, "--warmstart-fraction", "0"), 2,
         "--warmstart-fraction"),
    case("flags", "calibrate --batch-size 0", lambda c: cal(c, "--batch-size", "0"), 2, "--batch-size"),
    case("flags", "calibrate --limit 0", lambda c: cal(c, "--limit", "0"), 2, "--limit"),
    case("flags", "demo --n-train 0", lambda c: ["demo", "--out", str(c.new), "--n-train", "0"], 2, "--n-train"),
    case("flags", "demo --seed -1", lambda c: ["demo", "--out", str(c.new), "--seed", "-1"], 2, "--seed"),
    # -- paths: of the right kind, and a missing local base is not "the hub could not be reached"
    case("paths", "--steered missing", lambda c: gen(c, src="new"), 2, "--steered", "new", "does not exist"),
    case("paths", "--steered is a file", lambda c: ["generate", "--steered", str(c.data), "--prompt", "x"], 2,
         "--steered", "task.jsonl", "is a file"),
    case("paths", "--adapter missing", lambda c: ["generate", "--adapter", str(c.new), "--prompt", "x"], 2,
         "--adapter", "does not exist"),
    case("paths", "--base local path missing (generate)", lambda c: ["generate", "--adapter", str(c.A), "--base",
         str(c.tmp / "no" / "base"), "--prompt", "x"], 2, "--base", "does not exist", "local path",
         never=("could not be reached", "offline")),
    case("paths", "--base local path missing (warmstart)", lambda c: [*ws(c)[:8], "./no/such/base", *ws(c)[9:]], 2,
         "./no/such/base", "does not exist", never=("could not be reached", "offline")),
    case("paths", "--base is a file", lambda c: ["generate", "--adapter", str(c.A), "--base", str(c.data),
         "--prompt", "x"], 2, "--base", "is a file"),
    case("paths", "--prompt-file missing", lambda c: ["generate", "--steered", str(c.run), "--prompt-file",
         str(c.tmp / "none.txt")], 2, "--prompt-file", "none.txt"),
    case("paths", "--prompt-file blank", lambda c: prompt_file(c, "blank.txt", "\n  \n"), 2, "blank.txt", "no prompt"),
    case("paths", "--prompt-file binary", lambda c: prompt_file(c, "bin.txt", b"\xff\xfe\x00x"), 2, "bin.txt", "UTF-8"),
    case("paths", "report: results missing", lambda c: ["report", str(c.tmp / "none.json"), "--out", str(c.new)], 2,
         "none.json", "does not exist"),
    case("paths", "report: results corrupt", lambda c: ["report", str(c.file("r.json", "{")), "--out", str(c.new)], 2,
         "r.json", "not valid JSON"),
    case("paths", "report: not a results file", lambda c: ["report", str(c.file("r.json", "[1]")), "--out",
         str(c.new)], 2, "r.json", "not an svdecode results file"),
    case("paths", "report --out is a file", lambda c: _report(c, c.eval)[:3] + [str(c.data)], 2, "task.jsonl",
         "is a file", never=("Errno",)),
    case("paths", "demo --out is a file", lambda c: ["demo", "--out", str(c.data)], 2, "task.jsonl", "is a file",
         never=("Errno",)),
    case("paths", "calibrate --out is a file", lambda c: cal(c, "--out", str(c.data)), 2, "task.jsonl", "is a file"),
    # -- data files: the message names the file and the row
    case("data", "--data missing", lambda c: ["warmstart", "--data", str(c.tmp / "none.jsonl"), "--out", str(c.new)],
         2, "none.jsonl", "does not exist"),
    case("data", "--data invalid JSON line", lambda c: data(c, "bad.jsonl", '{"prompt": "a", "answer": " b"}\n{"pr'),
         2, "bad.jsonl", "line 2"),
    case("data", "--data missing column", lambda c: data(c, "nocol.jsonl", '{"question": "a", "answer": " b"}\n'), 2,
         "nocol.jsonl", "'prompt'", "line 1"),
    case("data", "--data empty answer", lambda c: data(c, "ea.jsonl", '{"prompt": "a", "answer": ""}\n'), 2,
         "ea.jsonl", "line 1"),
    case("data", "--data a .json holding one object", lambda c: data(c, "one.json", json.dumps(ROWS[0])), 2,
         "one.json", "single JSON object"),
    case("data", "--data a .json holding one object over lines", lambda c: data(c, "one2.json",
         json.dumps(ROWS[0], indent=2)), 2, "one2.json", "single JSON object"),
    case("data", "a bad row's hint names --skip-bad-rows", lambda c: data(c, "bad2.jsonl",
         '{"prompt": "a", "answer": " b"}\n{"prompt": "a"}\n'), 2, "bad2.jsonl", "line 2", "--skip-bad-rows"),
    case("data", "--data empty file", lambda c: data(c, "empty.jsonl", ""), 2, "empty.jsonl", "no rows"),
    case("data", "--data a list of numbers", lambda c: data(c, "list.json", "[1, 2]"), 2, "list.json", "row 1"),
    case("data", "--data csv without the --prompt-col", lambda c: data(c, "t.csv", "q,answer\nhi, there\n"), 2,
         "t.csv", "'prompt'"),
    case("data", "--data unknown spec", lambda c: ["warmstart", "--data", "foo:bar", "--out", str(c.new)], 2,
         "foo:bar", "unknown task spec"),
    case("data", "calibrate on a pair longer than the context", lambda c: ["calibrate", "--steered", str(c.run),
         "--data", str(c.file("long.jsonl", json.dumps({"prompt": LONG, "answer": " yes"}))), "--out", str(c.run),
         "--overwrite"], 2, "pair 1", "context of 256"),
    case("data", "warm-start examples longer than the positions", lambda c: data(c, "long.jsonl",
         json.dumps({"prompt": LONG, "answer": " yes"})), 2, "256 positions", "--train-max-length"),
    # -- steering_config.json: a schema; every field required, typed, ranged, known
    artifact("config without mu", lambda d: d.pop("mu"), "'mu'", "missing"),
    artifact("config mu as a string", lambda d: d.update(mu="1.0"), "'mu'", "str"),
    artifact("config mu as a bool", lambda d: d.update(mu=True), "'mu'", "bool"),
    artifact("config mu NaN", lambda d: d.update(mu=float("nan")), "'mu'", "finite"),
    artifact("config mu 1e39", lambda d: d.update(mu=1e39), "'mu'", "fp32", "1e+30"),
    artifact("config mu_bins strength 1e39", lambda d: d.update(mu_bins={"observable": "log_max_p_adapted",
             "edges": [-1.0], "mu": [0.5, 1e39]}), "'mu_bins'", "fp32"),
    artifact("config alpha 1.5", lambda d: d.update(alpha=1.5), "'alpha'", "[0, 1]"),
    artifact("config alpha as a string", lambda d: d.update(alpha="0.1"), "'alpha'", "str"),
    artifact("config lam a word", lambda d: d.update(lam="lots"), "'lam'", "-inf"),
    artifact("config lam +inf", lambda d: d.update(lam="+inf"), "'lam'"),
    artifact("config unknown field", lambda d: d.update(mu_bar=1.0), "mu_bar", "unknown"),
    artifact("config method unknown", lambda d: d.update(method="magic"), "'method'", "magic"),
    artifact("config objective unknown", lambda d: d.update(objective="mode"), "'objective'", "mode"),
    artifact("config calibration a list", lambda d: d.update(calibration=[]), "'calibration'"),
    artifact("config base_model a number", lambda d: d.update(base_model=3), "'base_model'"),
    artifact("config library_version null", lambda d: d.update(library_version=None), "'library_version'"),
    artifact("config format_version 99", lambda d: d.update(format_version=99), "format_version 99"),
    artifact("config format_version '2'", lambda d: d.update(format_version="2"), "format_version"),
    artifact("config not JSON", lambda d: None, "not valid JSON", raw="{mu: 1"),
    artifact("config a JSON list", lambda d: None, "expected a JSON object", raw="[]"),
    artifact("config format 1 without mu", lambda d: (d.pop("mu"), d.update(format_version=1)), "'mu'", "missing"),
    case("artifacts", "config format 1 (lam as text) loads", gen, 0,
         setup=lambda c: c.edit_config(lambda d: d.update(format_version=1, lam="-5.0"))),
    case("artifacts", "config edited by hand: loaded with a warning", gen, 0, CONFIG_NAME, "changed since",
         setup=lambda c: c.edit_config(lambda d: d.update(mu=2.0))),
    case("artifacts", "run manifest corrupt", lambda c: run_args(c, c.run), 2, rundir.MANIFEST_NAME, "corrupt",
         setup=lambda c: (c.run / rundir.MANIFEST_NAME).write_text("{")),
    case("artifacts", "older run dir: warmstart.json corrupt", lambda c: gen(c, "--base", str(c.base), src="legacy"),
         2, "warmstart.json", "corrupt", setup=lambda c: (c.legacy / "warmstart.json").write_text("{")),
    # -- adapter directories and the base they were trained on
    case("adapters", "adapter dir without adapter_config.json", lambda c: ["generate", "--adapter", str(c.tmp),
         "--prompt", "x"], 2, "adapter_config.json"),
    case("adapters", "adapter_config.json corrupt", lambda c: ["generate", "--adapter", str(c.A), "--prompt", "x"], 2,
         "adapter_config.json", "not valid JSON", setup=lambda c: (c.A / "adapter_config.json").write_text("{")),
    case("adapters", "adapter_config.json without peft_type", lambda c: ["generate", "--adapter", str(c.A),
         "--prompt", "x"], 2, "adapter_config.json", "peft_type",
         setup=lambda c: (c.A / "adapter_config.json").write_text('{"r": 8}')),
    case("adapters", "adapter weights missing", lambda c: ["generate", "--adapter", str(c.A), "--prompt", "x"], 2,
         lambda c: str(c.A), "no adapter weights", setup=lambda c: (c.A / "adapter_model.safetensors").unlink()),
    case("adapters", "adapter weights truncated", lambda c: ["generate", "--adapter", str(c.A), "--prompt", "x"], 2,
         "adapter weights", "corrupt", setup=_truncate_weights),
    case("adapters", "adapter onto another base of the same shape", lambda c: ["generate", "--adapter", str(c.A),
         "--base", str(c.base2), "--prompt", "x"], 2, "other weights", "--force"),
    case("adapters", "adapter onto another base with --force", lambda c: ["generate", "--adapter", str(c.A),
         "--base", str(c.base2), "--prompt", "x", "--max-new-tokens", "2", "--force"], 0, "--force", "other weights"),
    case("adapters", "steered dir onto another base", lambda c: gen(c, "--base", str(c.base2)), 2, "other weights"),
    case("adapters", "adapter onto a base whose layer 0 differs", lambda c: ["generate", "--adapter", str(c.A),
         "--base", str(c.base_layers), "--prompt", "x"], 2, "other weights", "model.layers.0.self_attn.q_proj",
         "--force"),
    case("adapters", "steered dir onto a base whose layer 0 differs", lambda c: gen(c, "--base",
         str(c.base_layers)), 2, "other weights", "model.layers.0"),
    case("adapters", "a base whose layer 0 differs, with --force", lambda c: gen(c, "--base", str(c.base_layers),
         "--force"), 0, "--force", "model.layers.0"),
    case("adapters", "the same base loaded in bfloat16 passes", lambda c: gen(c, "--dtype", "bfloat16"), 0,
         never=("other weights",)),
    case("adapters", "steered dir onto a base with another vocabulary", lambda c: gen(c, "--base", str(c.base_vocab)),
         2, "vocab_size"),
    case("adapters", "calibrate an adapter on another base", lambda c: cal(c, "--base", str(c.base2),
         src=("--adapter", "A")), 2, "other weights"),
    case("adapters", "an older svdecode's run dir loads", lambda c: gen(c, "--base", str(c.base), src="legacy"), 0),
    # -- run directories: reuse only what matches; --overwrite always works; another run's is refused
    case("run dirs", "run: changed options into a finished run", lambda c: run_args(c, c.run, "--lr", "1e-3",
         "--n-train", "10", "--estimator", "median"), 2, lambda c: str(c.run), "config.lr: 0.01 -> 0.001", "--overwrite", "--out"),
    case("run dirs", "run: changed objective only", lambda c: run_args(c, c.run, "--objective", "median"), 2,
         "calibration", "objective", "--overwrite"),
    case("run dirs", "run: changed options with --overwrite", lambda c: run_args(c, c.run, "--lr", "1e-3",
         "--n-train", "10", "--estimator", "median", "--overwrite"), 0, after=_changed_and_overwritten),
    case("run dirs", "run: the same request reuses", lambda c: run_args(c, c.run), 0,
         after=_says_in_stdout("ran: nothing")),
    case("run dirs", "run: the same request with --overwrite redoes", lambda c: run_args(c, c.run, "--overwrite"), 0,
         after=_says_in_stdout("ran: warmstart, calibrate")),
    case("run dirs", "run: steering config edited since", lambda c: run_args(c, c.run), 2, CONFIG_NAME,
         "changed after", setup=lambda c: c.edit_config(lambda d: d.update(mu=5.0))),
    case("run dirs", "run: adapter weights replaced since", lambda c: run_args(c, c.run), 2,
         "adapter_model.safetensors", "changed after",
         setup=lambda c: shutil.copy(c.A / "adapter_model.safetensors", c.run / "adapter_model.safetensors")),
    case("run dirs", "run into an older svdecode's run dir", lambda c: run_args(c, c.legacy), 2, lambda c: str(c.legacy),
         "older svdecode", "--overwrite"),
    case("run dirs", "run into an older run dir with --overwrite", lambda c: run_args(c, c.legacy, "--overwrite"), 0),
    case("run dirs", "calibrate --adapter A --out <another run>", lambda c: cal(c, "--out", str(c.run),
         src=("--adapter", "A")), 2, lambda c: str(c.run), "belongs to another run", "--overwrite"),
    case("run dirs", "calibrate --adapter A --out <another run> --overwrite", lambda c: cal(c, "--out", str(c.run),
         "--overwrite", src=("--adapter", "A")), 0, "removing", "warmstart.json", after=_adopted_other_run),
    case("run dirs", "calibrate into its own run with other data", lambda c: cal(c, "--limit", "6", "--out",
         str(c.run)), 2, "calibration asked for something else", "--overwrite"),
    case("run dirs", "calibrate the same request twice reuses", lambda c: cal(c, "--out", str(c.new),
         src=("--adapter", "A")), 0, after=_reused_calibration),
    case("run dirs", "calibrate into an older svdecode's run dir", lambda c: cal(c, "--base", str(c.base), "--out",
         str(c.legacy), src=("--steered", "legacy")), 2, "older svdecode"),
    case("run dirs", "warmstart into a finished run", lambda c: ws(c, out=c.run), 2,
         "already holds a finished warm-start", "--overwrite"),
    case("run dirs", "warmstart --overwrite never deletes a user's files", lambda c: ws(c, "--overwrite", out=c.run),
         2, "notes.txt", "did not write", setup=lambda c: (c.run / "notes.txt").write_text("mine")),
    case("run dirs", "warmstart with other options into a finished one names them", lambda c: ws(c, out=c.A), 2,
         "already holds a finished warm-start asked for something else", "config.max_steps: 2 -> 4", "--overwrite"),
    case("run dirs", "report of other results into a report's --out", lambda c: _report(c, c.extra["other"]), 2,
         "holds a report of other results", "results", "--overwrite",
         setup=lambda c: c.extra.update(other=_other_results(c))),
    case("run dirs", "report of other results with --overwrite replaces it", lambda c: _report(c, c.extra["other"],
         "--overwrite"), 0, setup=lambda c: c.extra.update(other=_other_results(c)), after=_only_the_new_report),
    case("run dirs", "report of the same results again", lambda c: _report(c, c.eval), 0,
         setup=lambda c: main(_report(c, c.eval))),
    case("run dirs", "report into a folder of the user's files", lambda c: _report(c, c.eval), 2, "notes.txt",
         "did not record", setup=lambda c: (c.new.mkdir(), (c.new / "notes.txt").write_text("mine"))),
    case("run dirs", "warmstart over an interrupted one without --resume", lambda c: ws(c), 2, ".partial",
         "step 2", "--resume", "--overwrite", setup=_interrupted_warmstart),
    case("run dirs", "warmstart over an interrupted one with --overwrite", lambda c: ws(c, "--overwrite"), 0,
         "removing the interrupted run", "new.partial", setup=_interrupted_warmstart, after=_steps_complete),
    case("run dirs", "warmstart over an interrupted one with --resume", lambda c: ws(c, "--resume"), 0,
         setup=_interrupted_warmstart, after=_steps_complete),
    case("run dirs", "a warm-start killed while renaming into place", lambda c: run_args(c, c.run), 0,
         "not yet renamed", setup=lambda c: c.run.rename(c.run.with_name("run.partial"))),
    case("run dirs", "eval into a run dir", lambda c: eval_args(c.run, c.run), 2, "holds a model run"),
    case("run dirs", "eval: other options into a finished evaluation", lambda c: eval_args(c.run, c.eval, "--limit",
         "3"), 2, lambda c: str(c.eval), "evaluation asked for something else", "--overwrite"),
    case("run dirs", "eval: the same request resumes from caches", lambda c: eval_args(c.run, c.eval), 0),
    case("run dirs", "eval: other options with --overwrite", lambda c: eval_args(c.run, c.eval, "--limit", "3",
         "--overwrite"), 0, "--overwrite", "replacing the evaluation"),
    case("run dirs", "eval into an older svdecode's evaluation", lambda c: eval_args(c.run, c.legacy_eval), 2,
         lambda c: str(c.legacy_eval), "older svdecode"),
    case("run dirs", "eval of another model into a finished evaluation", lambda c: eval_args(c.A, c.eval,
         src="--adapter"), 2, "evaluation asked for something else", "model.fingerprint"),
    # -- concurrent writers
    locked("run while another process writes --out", lambda c: run_args(c, c.run), "run"),
    locked("calibrate while another process writes --out", lambda c: cal(c, "--out", str(c.run)), "run"),
    locked("warmstart while another process writes --out", lambda c: ws(c), "new"),
    locked("eval while another process writes --out", lambda c: eval_args(c.run, c.eval), "eval"),
    case("concurrency", "a stale lock of a dead process is taken over", lambda c: run_args(c, c.run), 0,
         "stale lock", ".run.svdecode.lock", "999999999", setup=_stale_lock),
    case("concurrency", "a lock of another machine is named", lambda c: run_args(c, c.run), 2, "another machine",
         "elsewhere", setup=lambda c: _stale_lock(c, host="elsewhere")),
    # -- interrupts at chosen points; the printed command resumes
    *[case("interrupts", f"Ctrl-C in warm-start step {k}", lambda c: ws(c), 130, "interrupted", "saved:",
           "resume with: svdecode warmstart", inject=_raise_at("transformers:Trainer.training_step", k - 1),
           after=lambda c, out, err: (_resume(c, out, err), _steps_complete(c, out, err))) for k in _STEPS],
    case("interrupts", "SIGTERM in warm-start", lambda c: run_args(c, c.new), 143, "terminated (SIGTERM)",
         "resume with: svdecode run", inject=_raise_at("transformers:Trainer.training_step", 1, exc=Terminated),
         after=_resume),
    case("interrupts", "Ctrl-C in calibration (run)", lambda c: run_args(c, c.new), 130, "the finished warm-start",
         "resume with: svdecode run", inject=_raise_at("svdecode.model.steered_model:calibrate_streams"), after=_resume),
    *[case("interrupts", f"Ctrl-C in evaluation after {n} item(s)", lambda c: eval_args(c.run, c.eval), 130,
           "evaluated item(s)", "resume with: svdecode eval", setup=_fresh_eval,
           inject=_raise_at("svdecode.eval.cache:ItemCache.add", n), after=_resume_eval_matches) for n in _ITEMS],
    case("interrupts", "Ctrl-C in calibrate --out", lambda c: cal(c, "--out", str(c.new), src=("--adapter", "A")),
         130, "unchanged", inject=_raise_at("svdecode.model.steered_model:calibrate_streams"), after=_resume),
    case("interrupts", "Ctrl-C in generate", gen, 130, "interrupted", "nothing",
         inject=_raise_at("svdecode.model.steered_model:SteeredModel.generate_text"),
         after=lambda c, out, err: "resume with" not in err or pytest.fail(err)),
    # -- prompts against the model's context
    case("inputs", "a prompt longer than the context", lambda c: prompt_file(c, "long.txt", LONG), 2, "prompt 1",
         "context", "--truncate"),
    case("inputs", "a long prompt with --truncate", lambda c: prompt_file(c, "long.txt", LONG, "--truncate",
         "--max-new-tokens", "2"), 0),
    case("inputs", "an empty prompt", lambda c: ["generate", "--steered", str(c.run), "--prompt", "",
         "--max-new-tokens", "2"], 0, "prompt 1 is empty"),
    case("inputs", "--max-new-tokens beyond the context", lambda c: gen(c, "--max-new-tokens", "300"), 2,
         "max_new_tokens=300", "context of 256"),
    case("inputs", "beam search --num-beams 2", lambda c: gen(c, "--num-beams", "2"), 0),
    case("inputs", "--steered with --adapter", lambda c: gen(c, "--adapter", str(c.A)), 2, "--steered", "--adapter",
         "not both"),
    case("inputs", "--adapter on a calibrated directory says which mu", lambda c: ["generate", "--adapter",
         str(c.run), "--prompt", "x", "--max-new-tokens", "2"], 0, "mu = 0", "steering_config.json",
         lambda c: f"--steered {c.run}"),
    case("inputs", "eval --limit is recorded", lambda c: eval_args(c.run, c.new), 0, after=_limit_recorded),
]
# fmt: on


def test_the_table_covers_every_kind_of_fault():
    kinds = {c.category for c in CASES}
    assert kinds == {"flags", "paths", "data", "artifacts", "adapters", "run dirs", "concurrency", "interrupts",
                     "inputs"}  # fmt: skip
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


def _locks(c: Ctx) -> set[Path]:
    return set(c.tmp.glob(".*.svdecode.lock"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(case: Case, golden, tmp_path, capsys, caplog, monkeypatch):
    c = Ctx(golden, tmp_path)
    if case.setup:
        case.setup(c)
    capsys.readouterr()
    caplog.clear()
    before, locks = {d: snapshot(d) for d in c.dirs()}, _locks(c)
    if case.inject:
        case.inject(c, monkeypatch)
    with case.around(c) if case.around else contextlib.nullcontext():
        rc = main(case.argv(c))
    out, err = capsys.readouterr()
    message = err + caplog.text
    assert "Traceback" not in message, message
    assert rc == case.rc, f"exit {rc}, expected {case.rc}\n{message}"
    for text in case.says:
        text = text(c) if callable(text) else text
        assert text in message, f"{text!r} not in the message:\n{message}"
    for text in case.never:
        assert text not in err, f"{text!r} in the message:\n{err}"
    if rc == 2:  # one line naming the input, and nothing on disk changed
        assert len([line for line in err.splitlines() if line.startswith("svdecode ")]) == 1, err
    if case.after:
        case.after(c, out, err)
    for d, snap in before.items():
        now = snapshot(d)
        if rc == 2:
            assert now == snap, f"{d} changed although the command was refused"
        elif now != snap and now is not None and not d.name.endswith(".partial"):
            assert consistent(d) == [], f"{d} is inconsistent: {consistent(d)}"
    assert _locks(c) <= locks, f"lock files left behind: {_locks(c) - locks}"
