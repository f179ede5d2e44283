"""svdecode.versions: the one list of library versions recorded with results and printed by --version."""

from __future__ import annotations

import platform
from importlib import metadata

import torch

from svdecode import __version__
from svdecode.eval.runner import library_versions
from svdecode.versions import DEPENDENCIES, HARNESS_DEPENDENCIES, dependency_versions, describe


def test_dependency_versions_are_the_installed_ones():
    v = dependency_versions()
    assert list(v) == ["python", "svdecode", *DEPENDENCIES]
    assert v["python"] == platform.python_version() and v["svdecode"] == __version__
    assert v["torch"] == metadata.version("torch") and torch.__version__.startswith(v["torch"].split("+")[0])


def test_a_missing_library_is_recorded_as_not_installed():
    v = dependency_versions(extra=("svdecode-no-such-package",))
    assert v["svdecode-no-such-package"] == "not installed"


def test_describe_is_one_line_of_name_version_pairs():
    text = describe()
    assert "\n" not in text and text.startswith(f"python={platform.python_version()} svdecode={__version__} ")


def test_an_evaluation_records_the_core_list_plus_the_harness_libraries():
    v = library_versions()
    assert set(v) == {"platform", "python", "svdecode", *DEPENDENCIES, *HARNESS_DEPENDENCIES}
    assert v["platform"] == platform.platform()
