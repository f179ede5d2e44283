"""Greedy reference decodes from svdecode's own ``SteeredModel.generate`` (run in the main venv).

Usage: python tests/integrations/vllm_engine/reference.py STEERED_DIR SPEC_JSON > out.json, where SPEC_JSON is
``{"prompts": [...], "max_tokens": N, "settings": [{"method": ..., "mu": ...}, ...]}``. Prints
``{"prompt_ids": [[...]], "runs": [[{"tokens": [...], "logprobs": [...]}, ...], ...]}``: per
setting and prompt the greedy tokens and the steered log-probability of each chosen token (the
log-softmax of the logits ``generate()`` picked from). The vLLM tests compare against it; it runs
in the environment with the supported transformers, not in vLLM's.
"""

from __future__ import annotations

import copy
import json
import sys

import torch

from svdecode.model.steered_model import SteeredModel


def decode(model: SteeredModel, ids: list[int], max_tokens: int) -> dict:
    out = model.generate(
        input_ids=torch.tensor([ids]),
        max_new_tokens=max_tokens,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=model.tokenizer.pad_token_id,
    )
    tokens = out.sequences[0, len(ids) :].tolist()
    logprobs = [float(torch.log_softmax(s[0].float(), -1)[t]) for s, t in zip(out.scores, tokens, strict=False)]
    return {"tokens": tokens, "logprobs": logprobs}


def main() -> None:
    directory, spec = sys.argv[1], json.loads(sys.argv[2])
    model = SteeredModel.from_pretrained(directory)
    tok = model.tokenizer
    prompt_ids = [tok(p)["input_ids"] for p in spec["prompts"]]
    served, runs = copy.deepcopy(model.steering), []
    for setting in spec["settings"]:
        model.steering = copy.deepcopy(served)
        model.steering.method = setting.get("method", "svdecode")
        if "mu" in setting:
            model.steering.override(mu=setting["mu"])
        runs.append([decode(model, ids, spec["max_tokens"]) for ids in prompt_ids])
    json.dump({"prompt_ids": prompt_ids, "runs": runs}, sys.stdout)


if __name__ == "__main__":
    main()
