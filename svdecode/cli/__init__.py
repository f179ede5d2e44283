"""The ``svdecode`` command line (console script ``svdecode = "svdecode.cli:main"``, or
``python -m svdecode.cli``): the parser and entry point (:mod:`~svdecode.cli.parser`), what each
subcommand does (:mod:`~svdecode.cli.commands`), the shared option groups
(:mod:`~svdecode.cli.options`), Ctrl-C/SIGTERM handling (:mod:`~svdecode.cli.interrupts`) and the
one-command demo (:mod:`~svdecode.cli.demo`).

Layer: the top. May import everything (core, harness, integrations); nothing imports it. Light to
import: heavy libraries load inside the subcommands.
"""

from svdecode.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
