"""Integrations with standard tools: the lm-evaluation-harness model and the OpenAI-compatible server.

They import the library core (``svdecode.model.steered_model``, ``streams``, ``models``, ...), never the
harness (``train/``, ``data/``, ``eval/``), and their third-party dependencies are optional extras
(``pip install svdecode[lm-eval]`` / ``svdecode[serve]``), imported only by these modules.

Nothing here is imported by ``import svdecode``.
"""
