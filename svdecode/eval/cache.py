"""Per-item caches of an evaluation (append-only JSONL per task and method), so an interrupted run
resumes where it stopped and a changed setting never reuses stale items.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from svdecode.fileio import jsonable, slug, write_json_atomic, write_text_atomic

log = logging.getLogger("svdecode")


class ItemCache:
    """Append-only JSONL of per-item records for one (task, method), keyed by ``id``.

    ``fingerprint`` describes everything that determines a record; if the stored one differs
    the old file is discarded (moved to ``*.stale``). Lines that do not parse (a write cut off by
    an interruption) are dropped and the file is rewritten without them.
    """

    def __init__(self, path: str | Path | None, fingerprint: Mapping[str, Any] | None = None):
        self.path = Path(path) if path is not None else None
        self.records: dict[str, dict[str, Any]] = {}
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        meta = self.path.with_name(self.path.name + ".meta.json")
        fp = jsonable(dict(fingerprint or {}))
        if meta.is_file() and self.path.is_file():
            try:
                old = json.loads(meta.read_text())
            except json.JSONDecodeError:
                old = None
            if old != fp:
                log.warning("cache %s was made with other settings; starting it afresh", self.path)
                os.replace(self.path, self.path.with_name(self.path.name + ".stale"))
        elif self.path.is_file():
            log.warning("cache %s has no fingerprint; starting it afresh", self.path)
            os.replace(self.path, self.path.with_name(self.path.name + ".stale"))
        write_json_atomic(meta, fp)
        if self.path.is_file():
            good, bad = [], 0
            for line in self.path.read_text().splitlines():
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    bad += 1
                    continue
                if isinstance(rec, dict) and "id" in rec:
                    self.records[rec["id"]] = rec
                    good.append(line)
                else:
                    bad += 1
            if bad:
                log.warning("cache %s: dropped %d unreadable line(s) (interrupted write?)", self.path, bad)
                write_text_atomic(self.path, "".join(g + "\n" for g in good))

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, item_id: str) -> dict[str, Any] | None:
        return self.records.get(item_id)

    def add(self, record: Mapping[str, Any]) -> None:
        rec = jsonable(dict(record))
        self.records[rec["id"]] = rec
        if self.path is not None:
            with self.path.open("a") as fh:
                fh.write(json.dumps(rec, allow_nan=False) + "\n")
                fh.flush()


def cache_path(cache_dir: Path | None, task: str, name: str, suffix: str = "") -> Path | None:
    if cache_dir is None:
        return None
    return Path(cache_dir) / task / f"{slug(name)}{suffix}.jsonl"


RANK_PREFIX = ".rank"


def rank_cache_dir(cache_dir: Path, rank: int) -> Path:
    """Where process ``rank`` (> 0) of a launched evaluation keeps its per-item records."""
    return Path(cache_dir) / f"{RANK_PREFIX}{rank}"


def merge_rank_caches(cache_dir: Path) -> int:
    """Move the records of every process's cache (:func:`rank_cache_dir`, also those an
    interrupted launch left) into the run's caches of the same fingerprint; returns how many."""
    moved = 0
    for src in sorted(Path(cache_dir).glob(f"{RANK_PREFIX}*")):
        for path in sorted(src.rglob("*.jsonl")):
            meta = path.with_name(path.name + ".meta.json")
            if not meta.is_file():
                continue
            fingerprint = json.loads(meta.read_text())
            target_path = Path(cache_dir) / path.relative_to(src)
            target_meta = target_path.with_name(target_path.name + ".meta.json")
            if target_meta.is_file() and json.loads(target_meta.read_text()) != fingerprint:
                continue  # left by a launch with other settings: stale, never replaces the run's cache
            target = ItemCache(target_path, fingerprint)
            for rec in ItemCache(path, fingerprint).records.values():
                if rec["id"] not in target:
                    target.add(rec)
                    moved += 1
        shutil.rmtree(src)
    return moved
