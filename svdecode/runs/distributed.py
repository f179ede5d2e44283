"""Running under a launcher (``torchrun``, ``accelerate launch``): which process this is, and the
few collective steps svdecode needs so that N processes act as one run.

One process, the main one (rank 0), owns the run directory: it takes the lock, checks what the
directory holds, and writes every file. The others compute (their share of the training batches,
of the calibration items, of the test items) and wait at a barrier where the main one writes.
A refusal on the main process (a locked or foreign directory) reaches every process as
:class:`MainProcessFailed`, so none of them waits for a partner that has stopped.

Without a launcher (``WORLD_SIZE`` unset or 1) every function here is a no-op: rank 0 of 1.
The process group is joined lazily, on the first collective step: gloo on CPU, NCCL with CUDA
(the backend transformers' ``Trainer`` / accelerate would pick; a group they made is reused).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from svdecode.errors import SvdecodeError

T = TypeVar("T")


class MainProcessFailed(SvdecodeError):
    """Raised on the other processes when the main one stopped with an error (which it printed)."""


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() else None


def world_size() -> int:
    """How many processes run this command (1 without a launcher)."""
    dist = _dist()
    if dist is not None and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    dist = _dist()
    if dist is not None and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def active() -> bool:
    """True when started by a launcher with more than one process."""
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def _group():
    """The process group, joined on first use (the launcher's env:// rendezvous)."""
    import torch

    dist = _dist()
    if dist is None:
        raise RuntimeError("torch.distributed is not available, but WORLD_SIZE > 1")
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return dist


def barrier() -> None:
    if active():
        _group().barrier()


def broadcast(value: T) -> T:
    """The main process's ``value`` on every process (picklable objects)."""
    if not active():
        return value
    box = [value]
    _group().broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every process's ``value``, in rank order, on every process."""
    if not active():
        return [value]
    out: list[Any] = [None] * world_size()
    _group().all_gather_object(out, value)
    return out


def shard(n: int) -> range:
    """The indices of ``range(n)`` this process handles: every world_size()-th from its rank."""
    return range(rank(), n, world_size()) if active() else range(n)


def gather_sharded(local: Sequence[T], n: int) -> list[T]:
    """Put together the results of :func:`shard`: ``local[j]`` is item ``rank + j * world``; returns
    all ``n`` in their original order, on every process."""
    if not active():
        return list(local)
    world = world_size()
    parts = gather(list(local))
    return [parts[i % world][i // world] for i in range(n)]


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on the main process only and give its result (or its error) to every process.
    The main process re-raises its own error; the others raise :class:`MainProcessFailed`."""
    if not active():
        return fn()
    result: Any = None
    error: BaseException | None = None
    if is_main():
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - handed to the other processes, then re-raised
            error = err
    ok, result = broadcast((error is None, result if error is None else None))
    if error is not None:
        raise error
    if not ok:
        raise MainProcessFailed("the main process (rank 0) stopped with an error; see its message")
    return result
