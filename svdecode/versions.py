"""The versions of svdecode and of the libraries its numbers depend on (for reports and bug reports)."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from importlib import metadata

# What changes logits, training or evaluation: recorded with results and printed by `svdecode --version`.
DEPENDENCIES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "tokenizers",
    "safetensors",
    "huggingface_hub",
    "numpy",
)
# What the harness's text metrics and plots also depend on: recorded with evaluation results.
HARNESS_DEPENDENCIES = ("sacrebleu", "rouge-score", "matplotlib")


def dependency_versions(extra: Sequence[str] = ()) -> dict[str, str]:
    """``{"python": ..., "svdecode": ..., "torch": ..., ...}`` for :data:`DEPENDENCIES` and ``extra``;
    "not installed" where absent."""
    from svdecode import __version__

    out = {"python": platform.python_version(), "svdecode": __version__}
    for name in (*DEPENDENCIES, *extra):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def describe() -> str:
    return " ".join(f"{k}={v}" for k, v in dependency_versions().items())
