"""Interrupted commands: SIGTERM behaves like Ctrl-C (the same clean unwinding: locks released,
atomic writes finished or discarded), and the command line prints one line saying what was saved
and the exact command that resumes.

Harness module: imported by :mod:`svdecode.cli` only.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program was so it unwinds like Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` (a KeyboardInterrupt)."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _warmstart_state(out: Path) -> tuple[str, bool]:
    """(what the warm-start of ``out`` has saved, whether it needs --resume to continue)."""
    from svdecode.train import is_complete, partial_dir
    from svdecode.train.checkpoints import partial_summary

    part = partial_dir(out)
    if is_complete(part):  # stopped between writing the run and renaming it into place
        return f"the finished warm-start in {part} (moved to {out} on the next start)", False
    if part.is_dir():
        return f"the unfinished warm-start in {part} ({partial_summary(part)})", True
    if is_complete(out):
        return f"the finished warm-start in {out}", False
    return "nothing yet", False


def _cached_items(cache: Path) -> int:
    if not cache.is_dir():
        return 0
    return sum(
        sum(1 for line in p.read_text(errors="replace").splitlines() if line.strip())
        for p in cache.rglob("*.jsonl")
    )


def saved_work(command: str, out: str | None) -> tuple[str, bool]:
    """(what an interrupted ``command`` writing to ``out`` left on disk, whether resuming it
    needs ``--resume``)."""
    if not out:
        return "nothing (this command writes no files)", False
    root = Path(out)
    if command in ("warmstart", "run"):
        state, needs_resume = _warmstart_state(root)
        if command == "run" and (root / "steering_config.json").is_file() and not needs_resume:
            state += " and its calibration"
        return state, needs_resume
    if command == "eval":
        return f"{_cached_items(root / 'cache')} evaluated item(s) in {root / 'cache'}", False
    if command == "demo":
        runs = sorted(p for p in root.glob("commonsense-*") if not p.name.endswith((".partial", ".lock")))
        state = _warmstart_state(runs[0])[0] if runs else "nothing yet"  # the demo always resumes
        return (
            f"{state}; {_cached_items(root / 'eval' / 'cache')} evaluated item(s) in {root / 'eval'}",
            False,
        )
    if command == "calibrate":
        return f"nothing: {root} is unchanged (the calibration is written in one step at the end)", False
    return "nothing", False


def resume_command(argv: Sequence[str], needs_resume: bool) -> str:
    """The command that continues: the same one, plus ``--resume`` where an unfinished
    warm-start waits for it."""
    args = list(argv)
    if needs_resume and "--resume" not in args:
        args.append("--resume")
    return shlex.join([*launcher(), *args])


def launcher() -> list[str]:
    """How this command was started: ``svdecode``, or the same number of processes under
    ``torchrun`` (rendezvous flags of a multi-node launch are the user's own, not repeated here)."""
    from svdecode.runs import distributed

    if not distributed.active():
        return ["svdecode"]
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE") or distributed.world_size())
    nodes = distributed.world_size() // max(per_node, 1)
    return [
        "torchrun",
        *([f"--nnodes={nodes}"] if nodes > 1 else []),
        f"--nproc_per_node={per_node}",
        "-m",
        "svdecode.cli",
    ]


def interrupted_line(command: str, out: str | None, argv: Sequence[str], err: BaseException) -> str:
    """The one line an interrupted command prints."""
    what = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
    saved, needs_resume = saved_work(command, out)
    if command in ("generate", "report", "serve") or (command == "calibrate" and not out):
        return f"svdecode {command}: {what}; saved: {saved}"
    return f"svdecode {command}: {what}; saved: {saved}; resume with: {resume_command(argv, needs_resume)}"
