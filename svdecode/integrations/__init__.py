"""Integrations with standard tools: the lm-eval plug-in and the OpenAI-compatible server; they
import the library core, never the harness (train/, data/, eval/).

Nothing here is imported by ``import svdecode``; each integration pulls in its own optional
dependency (``pip install svdecode[lm-eval]``) only when it is imported itself.
"""
