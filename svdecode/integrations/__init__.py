"""Integrations with standard tools: the lm-eval plug-in and the OpenAI-compatible server; they
import the library core, never the harness (train/, data/, eval/)."""
