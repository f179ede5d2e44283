"""svdecode: Steering Vector Decoding (Hu et al., NeurIPS 2025) for transformers + peft."""

__version__ = "0.1.0"

__all__ = [
    "SteeredModel",
    "SteeringConfig",
    "__version__",
    "aggregate_mu",
    "confidence_mask",
    "steer_logits",
    "steering_vector",
    "token_mu",
]

_STEERING = ("aggregate_mu", "confidence_mask", "steer_logits", "steering_vector", "token_mu")


def __getattr__(name: str):
    # Everything is imported on first use: the math pulls in torch, SteeredModel transformers. So
    # `import svdecode.cli` stays light and the command line handles Ctrl-C from its first moment.
    if name in _STEERING:
        from svdecode import steering

        return getattr(steering, name)
    if name == "SteeredModel":
        from svdecode.model.steered_model import SteeredModel

        return SteeredModel
    if name == "SteeringConfig":
        from svdecode.model.config import SteeringConfig

        return SteeringConfig
    raise AttributeError(f"module 'svdecode' has no attribute {name!r}")
