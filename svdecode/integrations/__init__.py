"""Integrations with standard tools: the lm-evaluation-harness model and the OpenAI-compatible server.

Layer: integrations. They import only the library core (``svdecode.model``, ``steering``, ...), never
the harness (``train/``, ``data/``, ``eval/``) or ``cli/``, and their third-party dependencies are optional extras
(``pip install svdecode[lm-eval]`` / ``svdecode[serve]``), imported only by these modules.

Nothing here is imported by ``import svdecode``.
"""
