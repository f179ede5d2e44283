"""Calibrating the steering strength: the per-token sufficient statistics and the strength search
(:mod:`~svdecode.calibration.strength`), the objectives, cross-validation and guard that choose a
strength (:mod:`~svdecode.calibration.objectives`), and the pass over a calibration set that
collects the statistics through a model's two streams (:mod:`~svdecode.calibration.calibrate`).

Layer: core. May import only the core (top-level modules, steering/, calibration/, model/, runs/).
Import the submodules directly; this package imports nothing so ``strength`` stays torch-only.
"""
