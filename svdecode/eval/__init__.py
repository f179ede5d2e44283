"""The evaluation harness: base / PEFT / PEFT+SVDecode and the ablations on TruthfulQA (multiple
choice and open-ended) and the commonsense benchmarks, with paired comparisons, resumable per-item
caches, ``results.json`` / ``results.md`` and a report with plots.

Where things are: ``methods`` (what is compared and how each strength is calibrated),
``tasks`` (the registry: one :class:`TaskFamily` per task family -- data, evaluation,
calibration choices, report columns), ``options`` (:class:`EvalOptions`),
``truthfulqa_mc`` / ``truthfulqa_gen`` / ``commonsense`` (one module per task family),
``generation`` (batched decoding per method), ``judges`` (open-ended TruthfulQA), ``metrics`` and
``labels`` (pure metric functions), ``compare`` (paired bootstrap), ``cache`` (per-item resume),
``runner`` (``run_eval``: the whole run), ``report`` / ``plots`` / ``tables`` (Markdown and PNGs).

Design notes
------------
* **One forward pass, every method (scoring).** TruthfulQA MC computes the two streams' logits once
  per batch of (question, answer) pairs and applies each method's ``combine`` to the same logits,
  so adding an ablation to MC costs only an O(V) combine, not a model pass.
* **Scoring mode.** Teacher-forced scoring reads given answer tokens, which with ``lam=-inf`` score
  -inf when they fall outside the confidence mask. Every method therefore has a generation ``lam``
  (paper: -inf) and a scoring ``score_lam`` (default ``None``: "steer the kept tokens, leave the
  others at z_phi"); each MC result records the one it used as ``lam``.
* **Baselines generate with the plain models** ("base": adapter disabled), not through the doubled
  steered pass -- except prompt-learning adapters, whose peft ``generate`` is wrong on transformers
  >= 5.24 (see :mod:`svdecode.eval.generation`).
* **TruthfulQA prompt.** The original TruthfulQA code (``format_prompt(..., preset='qa')``)
  prefixes the 6-shot QA primer and scores only the answer tokens: prompt
  ``QA_PRIMER + "\\n\\nQ: {question}\\nA:"``, answer ``" " + choice`` (lm-eval-harness's
  ``truthfulqa_mc1/mc2`` format is the same). ``mc_prompt="plain"`` drops the primer.
* **Caching.** Per (task, method) JSONL files under ``<out>/cache/<task>/`` get one line per item
  as it finishes; a rerun skips ids already there. A fingerprint of everything that determines an
  item guards each file; a mismatch discards the stale cache.
* **TaD** (Xu et al., IJCAI 2024) is not implemented: see ``NOT_IMPLEMENTED``.

Layer: harness (extra ``harness``). May import the core and ``svdecode.data``, never ``cli/`` or
``integrations/``; matplotlib only inside :mod:`.plots`, sacrebleu and rouge-score only inside
:mod:`.metrics` (a missing one names the extra). Nothing in the core imports this package.
"""

from svdecode.eval.cache import ItemCache
from svdecode.eval.commonsense import commonsense_metrics, evaluate_commonsense
from svdecode.eval.compare import item_values, paired_comparisons
from svdecode.eval.judges import (
    INFO_QUESTION,
    TRUTH_QUESTION,
    Judge,
    JudgeVerdict,
    LocalLMJudge,
    OpenAIJudge,
    SimilarityJudge,
    judge_prompt,
)
from svdecode.eval.methods import (
    ALPHA_SWEEP,
    DECODINGS,
    GROUPS,
    NOT_IMPLEMENTED,
    STANDARD_METHODS,
    MethodSet,
    MethodSpec,
    as_float,
    build_methods,
    expand_method_names,
    known_method_names,
)
from svdecode.eval.options import EvalOptions
from svdecode.eval.runner import SCHEMA, load_results, run_eval, write_results
from svdecode.eval.strengths import model_fingerprint
from svdecode.eval.tasks import TASKS, TaskFamily
from svdecode.eval.truthfulqa_gen import clean_tqa_answer, evaluate_truthfulqa_gen, tqa_gen_metrics
from svdecode.eval.truthfulqa_mc import QA_PRIMER, evaluate_mc, mc_prompt

__all__ = [
    "EvalOptions",
    "TaskFamily",
    "ALPHA_SWEEP",
    "DECODINGS",
    "GROUPS",
    "INFO_QUESTION",
    "NOT_IMPLEMENTED",
    "QA_PRIMER",
    "SCHEMA",
    "STANDARD_METHODS",
    "TASKS",
    "TRUTH_QUESTION",
    "ItemCache",
    "Judge",
    "JudgeVerdict",
    "LocalLMJudge",
    "MethodSet",
    "MethodSpec",
    "OpenAIJudge",
    "SimilarityJudge",
    "as_float",
    "build_methods",
    "clean_tqa_answer",
    "commonsense_metrics",
    "evaluate_commonsense",
    "evaluate_mc",
    "evaluate_truthfulqa_gen",
    "expand_method_names",
    "item_values",
    "judge_prompt",
    "known_method_names",
    "load_results",
    "mc_prompt",
    "model_fingerprint",
    "paired_comparisons",
    "run_eval",
    "tqa_gen_metrics",
    "write_results",
]
