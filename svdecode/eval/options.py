"""The options of one evaluation (:func:`svdecode.eval.run_eval`) as one object: which methods are
compared and how the tasks are run. How the calibrated methods are calibrated is the library's
:class:`svdecode.calibration.config.CalibrationConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from svdecode.checks import POSITIVE_INT, SEED, check
from svdecode.eval.methods import STANDARD_METHODS


@dataclass(frozen=True)
class EvalOptions:
    """``method_names``: the methods compared (see :func:`svdecode.eval.build_methods`), each
    paired against ``reference``; ``limit``: a seeded subset of each task (per dataset for
    commonsense); ``score_lam``: lam for teacher-forced scoring (None: kept tokens steered);
    ``max_new_tokens`` defaults per task (commonsense 32, TruthfulQA generation 50);
    ``mu_curves``: one more scoring pass gives the test metric at every strength (the ORACLE
    curve). ``seed``, ``batch_size``, ``max_length`` and ``progress`` hold for the run's
    calibrations too."""

    method_names: tuple[str, ...] = STANDARD_METHODS
    limit: int | None = None
    seed: int = 0
    batch_size: int = 8
    max_new_tokens: int | None = None
    reference: str = "peft"
    score_lam: float | None = None
    mc_prompt_style: str = "qa_primer"
    max_length: int | None = None
    n_boot: int = 2000
    progress: bool = True
    mu_curves: bool = True

    def validate(self) -> EvalOptions:
        check("limit", self.limit, POSITIVE_INT, optional=True)
        check("seed", self.seed, SEED)
        check("batch_size", self.batch_size, POSITIVE_INT)
        check("max_new_tokens", self.max_new_tokens, POSITIVE_INT, optional=True)
        check("max_length", self.max_length, POSITIVE_INT, optional=True)
        check("n_boot", self.n_boot, POSITIVE_INT)
        return self
