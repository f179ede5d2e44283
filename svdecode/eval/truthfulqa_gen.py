"""Open-ended TruthfulQA: generation with the QA primer, judging (truthful / informative), and
%Truth, %Info, %Truth*Info with Wilson CIs; generations and verdicts are cached separately.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from svdecode.catalog import TRUTHFULQA_GEN
from svdecode.eval import generation, metrics
from svdecode.eval.cache import ItemCache, cache_path
from svdecode.eval.commonsense import same_generation_groups, share_within_group
from svdecode.eval.judges import INFO_QUESTION, TRUTH_QUESTION, Judge, SimilarityJudge
from svdecode.eval.methods import MethodSpec
from svdecode.eval.strengths import model_fingerprint
from svdecode.eval.truthfulqa_mc import QA_PRIMER
from svdecode.fileio import slug
from svdecode.model.scoring import batches

log = logging.getLogger("svdecode")


TQA_STOP = ("\n\n", "\nQ:")


def tqa_gen_prompt(question: str) -> str:
    """The original TruthfulQA generation prompt (QA primer, then the question), ending in "A:"."""
    return f"{QA_PRIMER}\n\nQ: {question}\nA:"


def clean_tqa_answer(text: str) -> str:
    """The answer part of a generation: up to the first blank line or next "Q:", one line."""
    cut = len(text)
    for stop in ("\n\n", "\nQ:"):
        pos = text.find(stop)
        if pos != -1:
            cut = min(cut, pos)
    return " ".join(text[:cut].split())


def evaluate_truthfulqa_gen(
    model,
    examples: Sequence[Any],
    methods: Sequence[MethodSpec],
    judge: Judge | None = None,
    *,
    batch_size: int = 8,
    max_new_tokens: int = 50,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Open-ended TruthfulQA: generate with the QA primer prompt, judge truthfulness and
    informativeness, report %Truth, %Info, %Truth*Info (Wilson CIs). Default judge: the offline
    :class:`SimilarityJudge` proxy. Generations and verdicts are cached separately, so changing
    the judge re-judges without regenerating. Unclear judge replies count as False (reported)."""
    judge = judge or SimilarityJudge()
    fp_common = {
        "task": TRUTHFULQA_GEN,
        "max_new_tokens": max_new_tokens,
        "prompt": "qa_primer",
        "model": model_fingerprint(model),
    }
    gen_caches = {
        m.name: ItemCache(
            cache_path(cache_dir, TRUTHFULQA_GEN, m.name), {**fp_common, **m.key(scoring=False)}
        )
        for m in methods
    }
    jslug = slug(judge.name) + "-" + judge.fingerprint()[:8]
    judge_caches = {
        m.name: ItemCache(
            cache_path(cache_dir, TRUTHFULQA_GEN, m.name, f".judge-{jslug}"),
            {**fp_common, **m.key(scoring=False), "judge": judge.fingerprint()},
        )
        for m in methods
    }
    cached_counts = {m.name: sum(1 for ex in examples if ex.id in judge_caches[m.name]) for m in methods}
    for group in same_generation_groups(methods).values():
        lead = group[0]
        todo = share_within_group(group, examples, gen_caches)
        if todo:
            gen = generation.generate_batches(
                model,
                lead,
                [tqa_gen_prompt(ex.meta["question"]) for ex in todo],
                [ex.id for ex in todo],
                batch_size,
                max_new_tokens,
                progress,
                f"TruthfulQA gen [{lead.name}]",
                stop_strings=TQA_STOP,
                seed=seed,
            )
            for sl, texts in gen:
                for ex, text in zip(todo[sl], texts, strict=True):
                    rec = {"id": ex.id, "output": text, "answer": clean_tqa_answer(text)}
                    for m in group:
                        gen_caches[m.name].add(rec)
    _judge_missing(examples, methods, gen_caches, judge_caches, judge, batch_size, progress)
    items_out: dict[str, list[dict[str, Any]]] = {}
    agg: dict[str, Any] = {}
    for m in methods:
        recs = []
        for ex in examples:
            g, j = gen_caches[m.name].get(ex.id), judge_caches[m.name].get(ex.id)
            recs.append({**g, **{k: v for k, v in j.items() if k != "id"}})
        items_out[m.name] = recs
        agg[m.name] = tqa_gen_metrics(recs, judge)
    return {
        "config": {
            "prompt_template": tqa_gen_prompt("{question}"),
            "max_new_tokens": max_new_tokens,
            "stop": list(TQA_STOP),
            "judge": {"name": judge.name, "kind": judge.kind, "questions": [TRUTH_QUESTION, INFO_QUESTION]},
        },
        "judge": {"name": judge.name, "kind": judge.kind},
        "items": items_out,
        "metrics": agg,
        "cache": {
            m.name: {"cached": cached_counts[m.name], "computed": len(examples) - cached_counts[m.name]}
            for m in methods
        },
    }


def _judge_missing(
    examples: Sequence[Any],
    methods: Sequence[MethodSpec],
    gen_caches: Mapping[str, ItemCache],
    judge_caches: Mapping[str, ItemCache],
    judge: Judge,
    batch_size: int,
    progress: bool,
) -> None:
    """Judge every generation that has no cached verdict yet, batch by batch (cached as it goes)."""
    for m in methods:
        todo = [ex for ex in examples if ex.id not in judge_caches[m.name]]
        if not todo:
            continue
        bar = tqdm(
            total=len(todo), desc=f"judging [{m.name}] with {judge.name}", unit="ex", disable=not progress
        )
        for sl in batches(len(todo), max(1, batch_size)):
            chunk = todo[sl]
            verdicts = judge.judge_many(
                [
                    (
                        ex.meta["question"],
                        gen_caches[m.name].get(ex.id)["answer"],
                        ex.meta.get("correct_answers", []),
                        ex.meta.get("incorrect_answers", []),
                    )
                    for ex in chunk
                ],
                progress=False,
            )
            for ex, v in zip(chunk, verdicts, strict=True):
                judge_caches[m.name].add(
                    {
                        "id": ex.id,
                        "truthful": v.truthful,
                        "informative": v.informative,
                        "judge_details": v.details,
                    }
                )
            bar.update(len(chunk))
        bar.close()


def tqa_gen_metrics(records: Sequence[Mapping[str, Any]], judge: Judge | Mapping[str, Any]) -> dict[str, Any]:
    kind = judge.kind if isinstance(judge, Judge) else judge.get("kind", "?")
    name = judge.name if isinstance(judge, Judge) else judge.get("name", "?")
    truth = [r["truthful"] is True for r in records]
    info = [r["informative"] is True for r in records]
    res = metrics.truth_info_summary(truth, info) if records else {"n": 0}
    res["n_unparsed_truth"] = sum(r["truthful"] is None for r in records)
    res["n_unparsed_info"] = sum(r["informative"] is None for r in records)
    res["judge"] = name
    res["judge_kind"] = kind
    return res
