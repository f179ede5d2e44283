"""The library's own error types: what ``svdecode`` raises for an input it can name.

Every error a user can act on derives from :class:`SvdecodeError`, so the command line prints it as
one line (``svdecode <command>: error: ...``) instead of a traceback; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class SvdecodeError(Exception):
    """An input, file or directory svdecode refuses; the message names it and the way out."""


class InputError(SvdecodeError, ValueError):
    """An argument out of its range, of the wrong type, or a path that is not what it must be."""


class ModelLoadError(SvdecodeError, RuntimeError):
    """A model, tokenizer or adapter could not be loaded or does not fit with another one."""
