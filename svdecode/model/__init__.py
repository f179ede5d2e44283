"""The steered model and what it is built from: loading bases and adapters
(:mod:`~svdecode.model.loading`), the two logit streams (:mod:`~svdecode.model.streams`) and their
KV caches (:mod:`~svdecode.model.kv_cache`), batched prompt/answer scoring
(:mod:`~svdecode.model.scoring`), the ``steering_config.json`` artifact
(:mod:`~svdecode.model.config`), base/adapter fingerprints (:mod:`~svdecode.model.fingerprint`),
and :class:`~svdecode.model.steered_model.SteeredModel` tying them together.

Layer: core. May import only the core (top-level modules, steering/, calibration/, model/, runs/).
Import the submodules directly; this package imports nothing (``import svdecode`` stays light).
"""
