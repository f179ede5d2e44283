"""Run directories (:mod:`~svdecode.runs.rundir`): the manifest every command writes, the rule
deciding when a finished stage is reused, and the directory lock.

Layer: core. May import only the core (top-level modules, steering/, calibration/, model/, runs/).
"""
