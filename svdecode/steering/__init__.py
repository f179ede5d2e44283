"""The steering math (Hu et al., eqs. 6-12 and 41-46): pure functions on logit tensors, fp32,
log-space, O(V). Lives in :mod:`svdecode.steering.functional`; the names are re-exported here so
``from svdecode.steering import steer_logits`` is the import to use.

Layer: core. May import only the core (top-level modules, steering/, calibration/, model/, runs/).
"""

from svdecode.steering.functional import (
    DIRECTIONS,
    EPS,
    ESTIMATORS,
    TokenMu,
    aggregate_mu,
    check_finite,
    confidence_mask,
    direction_vector,
    logit_arithmetic,
    steer_logits,
    steer_logits_prob_space,
    steering_vector,
    token_mu,
)

__all__ = [
    "DIRECTIONS",
    "EPS",
    "ESTIMATORS",
    "TokenMu",
    "aggregate_mu",
    "check_finite",
    "confidence_mask",
    "direction_vector",
    "logit_arithmetic",
    "steer_logits",
    "steer_logits_prob_space",
    "steering_vector",
    "token_mu",
]
