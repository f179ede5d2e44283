"""The library's own error types: what ``svdecode`` raises for an input it can name.

Every error a user can act on derives from :class:`SvdecodeError`, so the command line prints it as
one line (``svdecode <command>: error: ...``) instead of a traceback; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class SvdecodeError(Exception):
    """An input, file or directory svdecode refuses; the message names it and the way out."""


class InputError(SvdecodeError, ValueError):
    """An argument out of its range, of the wrong type, or a path that is not what it must be."""


class ModelLoadError(SvdecodeError, RuntimeError):
    """A model, tokenizer or adapter could not be loaded or does not fit with another one."""


class MissingExtraError(SvdecodeError, ImportError):
    """A library an optional part of svdecode needs is not installed; the message names the extra."""


def require_extra(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` for ``what``, or raise :class:`MissingExtraError` naming the pip extra that
    installs it (``pip install 'svdecode[extra]'``)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"{what} needs {module.split('.')[0]!r}, which is not installed: pip install 'svdecode[{extra}]'"
        ) from err
