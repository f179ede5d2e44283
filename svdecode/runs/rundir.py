"""Run directories as transactions: a manifest of what each stage was asked and what it wrote, and a
lock that keeps a second writer out.

``svdecode_run.json`` in a run directory (an adapter folder, a ``SteeredModel`` folder or an
evaluation's ``--out``)::

    {"format": "svdecode.run/1", "run_id": "...", "created": "...",
     "stages": {"warmstart": {"status": "complete", "request": {...}, "outputs": {"name": "<sha256>"},
                              "versions": {...}, "command": "...", "recorded": "..."}, ...}}

A stage is reused only when the new request equals the recorded one and every file the stage wrote
still has its recorded SHA-256; anything else stops with the difference and the two ways out
(overwrite, or another directory). A folder with svdecode files but no manifest was written before
manifests existed: it loads as it is, and is rewritten only on request (``overwrite``).

The lock is ``.<name>.svdecode.lock`` beside the directory (so it also covers ``<name>.partial``),
held with ``flock`` for the writer's lifetime: the kernel drops it when the process dies, so a lock
file nobody holds is stale, and is named when it is taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shlex
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from svdecode.errors import InputError, SvdecodeError
from svdecode.fileio import jsonable, write_json_atomic
from svdecode.runs import distributed

log = logging.getLogger("svdecode")

MANIFEST_NAME = "svdecode_run.json"
FORMAT = "svdecode.run/1"
STAGES = ("warmstart", "calibration", "evaluation", "report")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
# What svdecode, peft and tokenizers write into run directories; a folder holding one of the
# first group without a manifest was written by an older svdecode.
LEGACY_MARKERS = ("steering_config.json", "warmstart.json", "adapter_config.json", "results.json")
KNOWN_NAMES = frozenset(
    {
        MANIFEST_NAME,
        *LEGACY_MARKERS,
        *ADAPTER_FILES,
        "README.md",
        "train_log.jsonl",
        "split_manifest.json",
        "results.md",
        "cache",
        "token_mu",
        "checkpoints",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.json",
        "merges.txt",
        "tokenizer.model",
        "added_tokens.json",
        "chat_template.jinja",
    }
)
OVERWRITE_HINT = "pass --overwrite (overwrite=True) to replace it, or choose another output directory (--out)"


class RunDirError(SvdecodeError, ValueError):
    """A run directory that cannot be reused or written as asked; the message says why and how."""


class LockedError(RunDirError):
    """Another process holds (or may hold) the run directory's lock."""


# -- content hashes -----------------------------------------------------------------------------
def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hash_outputs(root: str | Path, names: Iterable[str]) -> dict[str, str]:
    """``{relative name: sha256}`` of the files ``names`` under ``root`` (folders: every file in them)."""
    root = Path(root)
    out: dict[str, str] = {}
    for name in sorted(set(names)):
        path = root / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if f.is_file():
                out[str(f.relative_to(root))] = sha256_file(f)
    return out


def adapter_digest(directory: str | Path) -> str | None:
    """One hash of a folder's adapter files (config + weights), None when it holds no adapter."""
    d = Path(directory)
    if not (d / "adapter_config.json").is_file():
        return None
    h = hashlib.sha256()
    for name in ADAPTER_FILES:
        if (d / name).is_file():
            h.update(f"{name}:{sha256_file(d / name)}\n".encode())
    return h.hexdigest()


# -- the manifest -------------------------------------------------------------------------------
def command_line() -> str:
    return shlex.join([Path(sys.argv[0]).name or "python", *sys.argv[1:]])


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    """The directory's manifest, None when it has none; a corrupt one is an error naming it."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunDirError(f"{path} is corrupt (not valid JSON: {err}); {OVERWRITE_HINT}") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("stages"), dict):
        raise RunDirError(f"{path} is not an svdecode run manifest ({FORMAT}); {OVERWRITE_HINT}")
    for name, entry in data["stages"].items():
        if not isinstance(entry, dict) or not {"status", "request", "outputs"} <= entry.keys():
            raise RunDirError(f"{path}: stage {name!r} lacks status/request/outputs; {OVERWRITE_HINT}")
    return data


def is_legacy(directory: str | Path) -> bool:
    """True for a folder an older svdecode wrote: svdecode files but no manifest."""
    d = Path(directory)
    return d.is_dir() and not (d / MANIFEST_NAME).exists() and any((d / m).exists() for m in LEGACY_MARKERS)


def record_stage(
    directory: str | Path,
    stage: str,
    request: Mapping[str, Any],
    outputs: Iterable[str],
    *,
    status: str = "complete",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Record ``stage`` (its request, the SHA-256 of each output, versions, command) in the
    directory's manifest, keeping the other stages; the manifest is replaced atomically."""
    from svdecode.versions import dependency_versions

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {STAGES}")
    d = Path(directory)
    manifest = read_manifest(d) or {
        "format": FORMAT,
        "run_id": uuid.uuid4().hex,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "stages": {},
    }
    manifest["stages"][stage] = {
        "status": status,
        "request": jsonable(dict(request)),
        "outputs": hash_outputs(d, outputs),
        "versions": dependency_versions(),
        "command": command_line(),
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **jsonable(dict(extra or {})),
    }
    write_json_atomic(d / MANIFEST_NAME, manifest)
    return manifest["stages"][stage]


def stage_entry(directory: str | Path, stage: str) -> dict[str, Any] | None:
    manifest = read_manifest(directory)
    return None if manifest is None else manifest["stages"].get(stage)


def owned_files(directory: str | Path) -> set[str]:
    """Every file a recorded stage wrote, plus the manifest."""
    manifest = read_manifest(directory) or {"stages": {}}
    return {MANIFEST_NAME} | {name for e in manifest["stages"].values() for name in e["outputs"]}


def foreign_entries(directory: str | Path) -> list[str]:
    """Entries of ``directory`` that svdecode did not write (a user's own files): never deleted."""
    d = Path(directory)
    if not d.is_dir():
        return []
    owned = {name.split("/")[0] for name in owned_files(d)}
    return sorted(
        p.name
        for p in d.iterdir()
        if p.name not in KNOWN_NAMES and p.name not in owned and not p.name.startswith(".")
    )


def modified_outputs(directory: str | Path, entry: Mapping[str, Any]) -> list[str]:
    """The stage's outputs that are missing or no longer have their recorded hash."""
    d = Path(directory)
    bad = []
    for name, digest in entry["outputs"].items():
        path = d / name
        if not path.is_file():
            bad.append(f"{name} (missing)")
        elif sha256_file(path) != digest:
            bad.append(f"{name} (changed)")
    return bad


def verify(directory: str | Path) -> list[str]:
    """Problems of a run directory: unfinished stages and outputs that are missing or changed."""
    manifest = read_manifest(directory)
    if manifest is None:
        return []
    problems = []
    for stage, entry in manifest["stages"].items():
        if entry["status"] != "complete":
            problems.append(f"stage {stage} is {entry['status']}")
        problems += [f"stage {stage}: {m}" for m in modified_outputs(directory, entry)]
    return problems


# -- comparing requests -------------------------------------------------------------------------
def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping) and data:
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}


def diff_requests(old: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """``["key: old -> new", ...]`` for every (dotted) key whose value differs."""
    a, b = _flat(jsonable(dict(old))), _flat(jsonable(dict(new)))
    skip = tuple(ignore)
    missing = object()
    lines = []
    for key in sorted(set(a) | set(b)):
        if key.startswith(skip) or a.get(key, missing) == b.get(key, missing):
            continue
        before = "(not set)" if key not in a else _short(json.dumps(a[key]))
        after = "(not set)" if key not in b else _short(json.dumps(b[key]))
        lines.append(f"{key}: {before} -> {after}")
    return lines


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 13] + "..." + text[-10:]


def summarize(lines: list[str], limit: int = 6) -> str:
    head = "; ".join(lines[:limit])
    return head + (f"; and {len(lines) - limit} more" if len(lines) > limit else "")


def check_reuse(
    directory: str | Path,
    stage: str,
    request: Mapping[str, Any],
    what: str,
    ignore: Iterable[str] = (),
) -> dict[str, Any] | None:
    """The recorded entry of ``stage`` when ``request`` may reuse it (status "complete") or
    continue it (an interrupted stage asked the same); None when the directory has no such stage.
    Raises :class:`RunDirError` for a directory written before manifests, a stage asked something
    else, or a finished stage whose files changed since."""
    d = Path(directory)
    if is_legacy(d):
        raise RunDirError(
            f"{d} was written by an older svdecode (no {MANIFEST_NAME}): it loads as it is, but what its "
            f"{what} was asked is not recorded, so it is not reused; {OVERWRITE_HINT}"
        )
    entry = stage_entry(d, stage)
    if entry is None:
        return None
    diff = diff_requests(entry["request"], request, ignore)
    if diff:
        raise RunDirError(
            f"{d} holds a {what} asked for something else ({summarize(diff)}); {OVERWRITE_HINT}"
        )
    if entry["status"] != "complete":
        return entry
    changed = modified_outputs(d, entry)
    if changed:
        raise RunDirError(
            f"{d}: files of its {what} were changed after it finished ({summarize(changed)}); {OVERWRITE_HINT}"
        )
    _warn_versions(d, what, entry.get("versions") or {})
    return entry


def _warn_versions(directory: Path, what: str, recorded: Mapping[str, str]) -> None:
    from svdecode.versions import dependency_versions

    now = dependency_versions()
    diff = [f"{k} {v} -> {now.get(k)}" for k, v in recorded.items() if now.get(k, v) != v]
    if diff:
        log.warning("reusing the %s in %s made with other versions: %s", what, directory, ", ".join(diff))


def reusable_for_adapter(
    directory: str | Path, adapter: str | None, stage: str, request: Mapping[str, Any], overwrite: bool
) -> bool:
    """True when ``directory`` holds ``stage`` asked exactly ``request`` (to be reused). Refuses,
    before any model loads, a path that is a file, a directory holding another adapter than
    ``adapter`` (another run's) unless ``overwrite``, and a recorded stage asked something else."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise InputError(f"--out {str(d)!r} is a file, not a directory")
    if overwrite or not d.is_dir():
        return False
    target = adapter_digest(d)
    if target is not None and target != adapter:
        raise RunDirError(
            f"{d} belongs to another run: it holds another adapter than the one being calibrated; write the "
            "calibration to a new --out, or pass --overwrite to replace that run"
        )
    entry = check_reuse(d, stage, request, stage)
    return entry is not None and entry["status"] == "complete"


def remove_outputs(directory: str | Path, reason: str) -> list[str]:
    """Delete what svdecode wrote in ``directory`` (recorded outputs, or for an older folder the
    files svdecode and peft write), saying which; a user's own files stay."""
    import shutil

    d = Path(directory)
    if not d.is_dir():
        return []
    names = {n.split("/")[0] for n in owned_files(d)} | (KNOWN_NAMES - {"README.md"})
    removed = sorted(n for n in names if (d / n).exists())
    if removed:
        log.warning("%s: removing %s from %s", reason, ", ".join(removed), d)
    for name in removed:
        path = d / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return removed


def claim(directory: str | Path, own_adapter: bool, overwrite: bool) -> bool:
    """Before saving a steered model into ``directory``: whether its adapter must be written.
    A directory that holds another run (another adapter, an evaluation) or was written by an older
    svdecode is refused unless ``overwrite``, which removes that run's files first (naming them);
    ``own_adapter``: the directory already holds this model's adapter (kept as it is)."""
    d = Path(directory)
    has_adapter = adapter_digest(d) is not None
    manifest = read_manifest(d) if d.is_dir() else None
    reason = None
    if has_adapter and not own_adapter:
        reason = "holds another adapter (another run's)"
    elif manifest is not None and "evaluation" in manifest["stages"]:
        reason = "holds an evaluation"
    elif is_legacy(d):
        reason = f"was written by an older svdecode (no {MANIFEST_NAME})"
    if reason is None:
        return not has_adapter
    if not overwrite:
        raise RunDirError(f"{d} {reason}; {OVERWRITE_HINT}")
    if own_adapter:  # an older folder of this very adapter: keep the adapter, replace the rest
        return False
    remove_outputs(d, f"--overwrite: {d} {reason}")
    return True


# -- the lock -----------------------------------------------------------------------------------
_held: dict[str, list[int]] = {}  # lock path -> [fd, depth]: re-entrant within one process


def lock_path(directory: str | Path) -> Path:
    d = Path(os.path.abspath(directory))
    return d.parent / f".{d.name}.svdecode.lock"


def _holder(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 65536).decode("utf-8", "replace")
    try:
        data = json.loads(raw)
        return data if isinstance(data, dict) else {}
    except json.JSONDecodeError:
        return {}


def _describe(holder: Mapping[str, Any]) -> str:
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, since {holder.get('since', '?')}, "
        f"running `{holder.get('command', '?')}`"
    )


def _acquire(directory: Path, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise LockedError(
                f"{directory} is being written by another svdecode process ({_describe(holder)}; lock "
                f"file {path}); wait for it to finish, or write to another output directory (--out)"
            ) from None
        try:  # the previous holder may have removed the file after we opened it: lock the new one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        old = _holder(fd)
        host = socket.gethostname()
        if old and old.get("host") not in (None, host):
            os.close(fd)
            raise LockedError(
                f"{directory} has a lock file {path} from {_describe(old)}: another machine, so svdecode "
                "cannot tell whether it still runs; if it does not, delete the lock file"
            )
        if old:
            log.warning(
                "taking over the stale lock %s left by %s: that process is gone", path, _describe(old)
            )
        me = {
            "pid": os.getpid(),
            "host": host,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": command_line(),
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        return fd


@contextlib.contextmanager
def locked(directory: str | Path) -> Iterator[Path]:
    """Hold the directory's write lock for the block (re-entrant within this process; under a
    launcher, held by the main process for all of them)."""
    path = lock_path(directory)
    key = str(path)
    if key in _held:
        _held[key][1] += 1
        try:
            yield path
        finally:
            _held[key][1] -= 1
        return
    # Under a launcher only the main process takes the lock (the others are the same run); its
    # refusal reaches them all. The others hold a placeholder so nesting stays in step.
    fd = distributed.on_main(lambda: _acquire(Path(directory), path))
    if not distributed.is_main():
        fd = -1
    _held[key] = [fd, 1]
    try:
        yield path
    finally:
        del _held[key]
        if fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    path.unlink()
            os.close(fd)
