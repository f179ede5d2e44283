"""The warm-start's output directory as a transaction: training happens in ``<out>.partial``
(checkpoints in ``<out>.partial/checkpoints``), and only a finished run is renamed to ``<out>``;
``resume`` continues an interrupted run from its last complete checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svdecode.fileio import write_text_atomic
from svdecode.runs import rundir
from svdecode.train.base_checks import compare_fingerprints, same_model_name
from svdecode.train.config import (
    AdapterMismatchError,
    WarmstartError,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from svdecode.data import Example


log = logging.getLogger("svdecode")


FORMAT_VERSION = 1


INFO_NAME = "warmstart.json"


LOG_NAME = "train_log.jsonl"


MANIFEST_NAME = "split_manifest.json"


REQUEST_NAME = "warmstart_request.json"  # in the partial dir: what the interrupted run was asked to do


CHECKPOINT_DIR = "checkpoints"


# Written last into every checkpoint: the exact trainable parameters (peft saves only the *output*
# of a P-Tuning / projected-prefix encoder, which cannot be trained further), and the marker that
# the checkpoint is complete.
TRAINABLE_NAME = "svdecode_trainable.safetensors"


PARTIAL_SUFFIX = ".partial"


# Options that may change between an interrupted run and its resumption.
RESUME_FREE_OPTIONS = {"logging_steps", "save_steps", "save_total_limit"}
# May change on resumption as long as the examples per step stay the same (another process count).
BATCH_OPTIONS = {"batch_size", "grad_accum"}


def partial_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    return out.with_name(out.name + PARTIAL_SUFFIX)


def is_complete(out_dir: str | Path) -> bool:
    """True when ``out_dir`` holds a finished warm-start (adapter + ``warmstart.json``)."""
    out = Path(out_dir)
    info = out / INFO_NAME
    if not (info.is_file() and (out / "adapter_config.json").is_file()):
        return False
    try:
        return json.loads(info.read_text()).get("status") == "complete"
    except (OSError, json.JSONDecodeError):
        return False


def read_info(out_dir: str | Path) -> dict[str, Any]:
    """The ``warmstart.json`` of a finished warm-start."""
    path = Path(out_dir) / INFO_NAME
    if not path.is_file():
        raise WarmstartError(f"{str(out_dir)!r} has no {INFO_NAME}; it is not a finished warm-start")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise WarmstartError(f"{path} is not valid JSON: {err}") from err


def check_out_dir(out: Path, overwrite: bool, request: dict[str, Any] | None = None) -> None:
    """Refuse an output directory that holds a finished run (unless ``overwrite``), or files that
    svdecode did not write (always: those are never deleted). ``request`` (what this warm-start is
    asked, :func:`warmstart_request`; ``base`` None when unknown) names how the finished one differs."""
    if out.name.endswith(PARTIAL_SUFFIX):
        raise WarmstartError(f"the output directory {str(out)!r} must not end in {PARTIAL_SUFFIX!r}")
    if not out.exists():
        return
    if not out.is_dir():
        raise WarmstartError(f"{str(out)!r} exists and is not a directory; choose another output directory")
    if not any(out.iterdir()):
        return
    foreign = rundir.foreign_entries(out)
    if foreign or not (rundir.read_manifest(out) is not None or rundir.is_legacy(out)):
        raise WarmstartError(
            f"{str(out)!r} exists, is not empty and is not a finished warm-start; refusing to replace it: it "
            f"holds files svdecode did not write ({', '.join(foreign[:5]) or 'no svdecode files'}). Choose "
            "another output directory, or move them away"
        )
    what = "a finished warm-start" if is_complete(out) else "another run's files"
    if not overwrite:
        entry = rundir.stage_entry(out, "warmstart")
        if entry is not None and request is not None:
            same_base = request.get("base") is None or same_model_name(
                entry["request"].get("base"), request["base"]
            )
            diff = rundir.diff_requests(
                entry["request"], request, REUSE_IGNORED + (("base",) if same_base else ())
            )
            what += (
                f" asked for something else ({rundir.summarize(diff)})" if diff else " of the same request"
            )
        raise WarmstartError(
            f"{str(out)!r} already holds {what}; use it as it is, pass overwrite=True (--overwrite) to "
            "train it again (replacing the directory), or choose another output directory (--out)"
        )
    stages = sorted((rundir.read_manifest(out) or {"stages": {}})["stages"])
    log.warning(
        "--overwrite: the finished run in %s (%s) will be replaced once the new warm-start finishes",
        out,
        ", ".join(stages) or "written by an older svdecode",
    )


def partial_summary(part: Path) -> str:
    """What an interrupted warm-start left: its last complete checkpoint, if any."""
    ckpt = last_checkpoint(part)
    return f"checkpoint at step {checkpoint_step(ckpt)}" if ckpt else "no complete checkpoint yet"


def warmstart_request(
    config: dict[str, Any], base: str, examples: Sequence[Example], manifest: dict[str, Any] | None
) -> dict[str, Any]:
    """What a warm-start is asked, as the run manifest records and compares it: the options, the
    base model's name and the training data (content hash and the split that chose it)."""
    split = (
        None if manifest is None else {k: manifest.get(k) for k in ("source", "seed", "requested", "sha256")}
    )
    return {
        "config": config,
        "base": base,
        "data": {"num_examples": len(examples), "sha256": data_fingerprint(examples), "split": split},
    }


# Request keys that may differ and still reuse a finished warm-start (they do not change the adapter).
REUSE_IGNORED = tuple(f"config.{k}" for k in ("logging_steps", "save_steps", "save_total_limit"))


def write_json(path: Path, data: Any) -> None:
    """Atomic, indented JSON; values JSON cannot hold (NaN losses, paths) are written as text."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def data_fingerprint(examples: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        for part in (ex.id, ex.prompt, ex.answer):
            h.update(part.encode("utf-8"))
            h.update(b"\x00")
    return h.hexdigest()


def checkpoint_step(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[-1])
    except ValueError:
        return -1


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``<run_dir>/checkpoints`` (one whose trainable-state
    file, written last, exists), or None."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return None
    done = [
        p
        for p in root.glob("checkpoint-*")
        if checkpoint_step(p) >= 0 and (p / TRAINABLE_NAME).is_file() and (p / "trainer_state.json").is_file()
    ]
    return max(done, key=checkpoint_step) if done else None


def trim_log(path: Path, max_step: int) -> None:
    """Keep only log lines up to ``max_step`` (the checkpoint a resumed run restarts from)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= max_step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    path.write_text("".join(k + "\n" for k in keep))


def check_resumable(part: Path, request: dict[str, Any], model: torch.nn.Module) -> None:
    try:
        old = json.loads((part / REQUEST_NAME).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WarmstartError(
            f"cannot read {part / REQUEST_NAME} to resume: {err}; pass --overwrite to start over"
        ) from err
    diffs = [
        f"{k}: {old['config'].get(k)!r} -> {v!r}"
        for k, v in request["config"].items()
        if k not in RESUME_FREE_OPTIONS | BATCH_OPTIONS and old.get("config", {}).get(k) != v
    ]
    _check_effective_batch(part, old, request)
    if diffs:
        raise WarmstartError(
            f"cannot resume {part}: the interrupted run used other options ({'; '.join(diffs)}); use the same "
            "options, or pass overwrite=True (--overwrite) instead of --resume to discard it and start over"
        )
    if old.get("data_sha256") != request["data_sha256"]:
        raise WarmstartError(
            f"cannot resume {part}: the training examples differ from the interrupted run's "
            f"({old.get('num_examples')} then, {request['num_examples']} now, or other contents); "
            "use the same data, or pass --overwrite instead of --resume to discard it and start over"
        )
    if old.get("tokenizer_size") != request["tokenizer_size"]:
        raise AdapterMismatchError(
            f"cannot resume {part}: the interrupted run's tokenizer had {old.get('tokenizer_size')} tokens, "
            f"this one {request['tokenizer_size']}"
        )
    if not same_model_name(old.get("base"), request["base"]):
        log.warning("resuming a run started on base %r with base %r", old.get("base"), request["base"])
    compare_fingerprints(old.get("base_fingerprint") or {}, model, f"the interrupted run in {part}")


def effective_batch(request: dict[str, Any]) -> tuple[int, str]:
    """Examples per optimizer step of a run (per-device batch x processes x accumulation), and how."""
    cfg = request.get("config", {})
    b, p, a = cfg.get("batch_size", 1), request.get("processes", 1), cfg.get("grad_accum", 1)
    return b * p * a, f"{b} per device x {p} process(es) x {a} accumulation step(s)"


def _check_effective_batch(part: Path, old: dict[str, Any], request: dict[str, Any]) -> None:
    """A run resumes on another number of processes only with the same examples per step: the
    Trainer's checkpoint counts optimizer steps (the learning-rate schedule, the batches to skip
    in the data order), so another effective batch would change what the steps mean."""
    (before, how_before), (now, how_now) = effective_batch(old), effective_batch(request)
    if before != now:
        raise WarmstartError(
            f"cannot resume {part}: it trained with an effective batch of {before} ({how_before}), this "
            f"launch gives {now} ({how_now}); launch {old.get('processes', 1)} process(es) with the same "
            "options, or choose --train-batch-size / --grad-accum so that per-device batch x processes x "
            f"accumulation = {before}; or pass --overwrite instead of --resume to start over"
        )
    if old.get("processes", 1) != request.get("processes", 1):
        log.warning(
            "resuming %s on %d process(es) (it ran on %d): same effective batch %d; the random state of "
            "processes the checkpoint has no file for starts from the seed",
            part, request.get("processes", 1), old.get("processes", 1), now,
        )  # fmt: skip


def publish(part: Path, out: Path) -> None:
    """Rename the finished ``part`` to ``out``, replacing an old finished (or empty) ``out``. An
    interruption between the two renames leaves a complete ``part`` and no ``out``, which
    :func:`finish_publish` completes on the next start."""
    old = None
    if out.exists():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(part, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def finish_publish(out: Path) -> None:
    """Complete a publish a killed process left half done: a finished ``<out>.partial`` with no
    ``<out>`` is renamed into place; leftover ``<out>.old-*`` copies of a replaced run are removed."""
    part = partial_dir(out)
    if not out.exists() and is_complete(part) and rundir.read_manifest(part) is not None:
        log.warning(
            "warm-start: %s is finished but was not yet renamed to %s (killed?): renaming it now", part, out
        )
        os.replace(part, out)
    for old in out.parent.glob(f"{out.name}.old-*"):
        if out.exists() and old.is_dir():
            log.warning("removing %s, the run an interrupted --overwrite had replaced", old)
            shutil.rmtree(old, ignore_errors=True)
