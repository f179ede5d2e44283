"""An OpenAI-compatible HTTP server for steered models (``svdecode serve``; extra ``serve``).

``create_app(model, settings)`` builds the FastAPI app, ``serve(model, settings, host, port)``
runs it with uvicorn; ``load_model(dir)`` loads a saved steered model or a PEFT adapter for it.
Importing this package needs no web framework; the names above import it on first use.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "create_app": "app",
    "serve": "app",
    "ServerSettings": "app",
    "load_model": "engine",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
