"""svdecode.runs.rundir: the run manifest (what each stage was asked, hashes of what it wrote), the
rule deciding when a finished stage is reused, and the directory lock."""

from __future__ import annotations

import json

import pytest

from svdecode.runs import rundir
from svdecode.runs.rundir import MANIFEST_NAME, RunDirError


def _stage(d, request=None, text="mu=1"):
    (d / "steering_config.json").write_text(text)
    return rundir.record_stage(
        d, "calibration", request or {"folds": 5, "objective": "nll"}, ["steering_config.json"]
    )


def test_a_stage_records_its_request_output_hashes_and_versions(tmp_path):
    entry = _stage(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["format"] == rundir.FORMAT and manifest["stages"]["calibration"] == entry
    assert entry["status"] == "complete" and entry["request"] == {"folds": 5, "objective": "nll"}
    assert entry["outputs"] == {"steering_config.json": rundir.sha256_file(tmp_path / "steering_config.json")}
    assert entry["versions"]["svdecode"] and rundir.stage_entry(tmp_path, "warmstart") is None
    assert rundir.owned_files(tmp_path) == {MANIFEST_NAME, "steering_config.json"}
    with pytest.raises(ValueError, match="unknown stage 'train'"):
        rundir.record_stage(tmp_path, "train", {}, [])


def test_a_finished_stage_is_reused_only_when_asked_the_same_and_unchanged(tmp_path):
    _stage(tmp_path)
    assert rundir.check_reuse(tmp_path, "calibration", {"folds": 5, "objective": "nll"}, "calibration")
    with pytest.raises(RunDirError, match=r"asked for something else \(folds: 5 -> 3\)"):
        rundir.check_reuse(tmp_path, "calibration", {"folds": 3, "objective": "nll"}, "calibration")
    (tmp_path / "steering_config.json").write_text("mu=2")
    assert rundir.verify(tmp_path) == ["stage calibration: steering_config.json (changed)"]
    with pytest.raises(
        RunDirError, match=r"were changed after it finished \(steering_config.json \(changed\)\)"
    ):
        rundir.check_reuse(tmp_path, "calibration", {"folds": 5, "objective": "nll"}, "calibration")
    assert rundir.check_reuse(tmp_path, "evaluation", {}, "evaluation") is None


def test_a_folder_written_before_manifests_loads_but_is_not_reused(tmp_path):
    (tmp_path / "steering_config.json").write_text("{}")
    assert rundir.is_legacy(tmp_path) and rundir.read_manifest(tmp_path) is None
    with pytest.raises(RunDirError, match="written by an older svdecode"):
        rundir.check_reuse(tmp_path, "calibration", {}, "calibration")


def test_a_corrupt_manifest_is_an_error_naming_it(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("{nope")
    with pytest.raises(RunDirError, match=f"{MANIFEST_NAME} is corrupt"):
        rundir.read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"format": "other", "stages": {}}))
    with pytest.raises(RunDirError, match="is not an svdecode run manifest"):
        rundir.read_manifest(tmp_path)


def test_diff_requests_lists_changed_added_and_removed_dotted_keys():
    old = {"a": 1, "cal": {"folds": 5, "bins": 3}, "gone": "x"}
    new = {"a": 1, "cal": {"folds": 3, "bins": 3}, "new": float("inf")}
    assert rundir.diff_requests(old, new) == [
        "cal.folds: 5 -> 3",
        'gone: "x" -> (not set)',
        'new: (not set) -> "inf"',
    ]
    assert rundir.diff_requests(old, new, ignore=("cal", "gone", "new")) == []
    assert rundir.summarize([str(i) for i in range(8)], limit=2) == "0; 1; and 6 more"


def test_foreign_files_are_never_owned(tmp_path):
    _stage(tmp_path)
    (tmp_path / "my_notes.txt").write_text("mine")
    assert rundir.foreign_entries(tmp_path) == ["my_notes.txt"]


def test_the_lock_is_reentrant_in_process_and_removed_after(tmp_path):
    path = rundir.lock_path(tmp_path)
    with rundir.locked(tmp_path) as held:
        assert held == path and path.exists()
        with rundir.locked(tmp_path):
            assert path.exists()
        assert path.exists()  # the outer block still holds it
    assert not path.exists()
