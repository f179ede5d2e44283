"""The steering math (Hu et al., eqs. 6-12 and 41-46): pure functions on logit tensors, fp32,
log-space, O(V). Lives in :mod:`svdecode.steering.functional`; the names are re-exported here so
``from svdecode.steering import steer_logits`` is the import to use. The steering object
(:class:`Steerer`, the registry of combine rules, :class:`BatchSteerer`) lives in
:mod:`svdecode.steering.steerer`, re-exported here too.

Layer: core. May import only the core (top-level modules, steering/, calibration/, model/, runs/).
"""

from svdecode.steering.functional import (
    DIRECTIONS,
    EPS,
    ESTIMATORS,
    MAX_STRENGTH,
    TokenMu,
    aggregate_mu,
    check_finite,
    check_strength,
    confidence_mask,
    direction_vector,
    logit_arithmetic,
    steer_logits,
    steer_logits_prob_space,
    steering_vector,
    token_mu,
)
from svdecode.steering.steerer import (
    RULES,
    BatchSteerer,
    CombineRule,
    Steerer,
    SteeringError,
    StrengthBins,
    register_rule,
)

__all__ = [
    "DIRECTIONS",
    "EPS",
    "ESTIMATORS",
    "MAX_STRENGTH",
    "RULES",
    "BatchSteerer",
    "CombineRule",
    "Steerer",
    "SteeringError",
    "StrengthBins",
    "TokenMu",
    "aggregate_mu",
    "check_finite",
    "check_strength",
    "confidence_mask",
    "direction_vector",
    "logit_arithmetic",
    "register_rule",
    "steer_logits",
    "steer_logits_prob_space",
    "steering_vector",
    "token_mu",
]
