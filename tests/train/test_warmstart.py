"""Warm-start: all five PEFT methods end to end on a tiny model, loss masking, validation before
training, atomic output, resume, fraction-of-an-epoch, reload checks."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
from conftest import make_model
from transformers import TrainerCallback

from svdecode.data import Example
from svdecode.model.steered_model import SteeredModel
from svdecode.train import (
    INFO_NAME,
    LOG_NAME,
    MANIFEST_NAME,
    METHODS,
    AdapterMismatchError,
    LazyExamples,
    PadCollator,
    WarmstartConfig,
    WarmstartError,
    add_warmstart_args,
    encode_example,
    is_complete,
    last_checkpoint,
    load_adapter,
    partial_dir,
    peft_config,
    read_info,
    warmstart,
    warmstart_config_from_args,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train faster on one thread; on a busy 2-core machine, much faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ANSWERS = [" the correct answer is true", " the correct answer is false"]


def examples(n: int = 8) -> list[Example]:
    return [
        Example(
            id=f"toy/train/{i}",
            dataset="toy",
            prompt=f"### Instruction: Please answer the following question with true or false. {i} ### Response:",
            answer=ANSWERS[i % 2],
            label=ANSWERS[i % 2].split()[-1],
        )
        for i in range(n)
    ]


def fast(method: str = "lora", **kw) -> WarmstartConfig:
    base = {"method": method, "lr": 1e-2, "max_steps": 4, "logging_steps": 1, "save_steps": 1000}
    base.update(kw)
    return WarmstartConfig(**base)


def probe_ids(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer("### Instruction: Please answer 3 ### Response: the correct").input_ids])


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    return out[:, -ids.shape[1] :]  # prompt/p-tuning return logits for the virtual tokens too


def nothing_written(out) -> bool:
    return not out.exists() and not partial_dir(out).exists()


class Crash(TrainerCallback):
    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise RuntimeError("simulated crash")


class FirstStep(TrainerCallback):
    def __init__(self):
        self.first = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.first is None:
            self.first = state.global_step


# ---------------------------------------------------------------------------------------------
# End to end, all methods


@pytest.mark.parametrize("method", METHODS)
def test_method_end_to_end(method, tokenizer, tmp_path):
    out = tmp_path / method
    model = make_model(len(tokenizer))
    manifest = {"seed": 0, "train": [e.id for e in examples()]}
    res = warmstart(
        examples(), out, fast(method), model=model, tokenizer=tokenizer, manifest=manifest, progress=False
    )

    assert res.steps == 4 and res.num_examples == 8 and res.method == method
    assert res.final_loss is not None and res.seconds > 0
    assert is_complete(out) and not partial_dir(out).exists()
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", LOG_NAME, INFO_NAME):
        assert (out / name).is_file(), name
    assert not (out / "checkpoints").exists()
    assert json.loads((out / MANIFEST_NAME).read_text()) == manifest
    log_lines = [json.loads(x) for x in (out / LOG_NAME).read_text().splitlines()]
    assert [r["step"] for r in log_lines] == [1, 2, 3, 4]
    assert all({"loss", "lr", "epoch"} <= r.keys() for r in log_lines)
    info = read_info(out)
    assert info["steps"] == 4 and info["method"] == method and info["config"]["method"] == method
    assert info["final_loss"] == pytest.approx(log_lines[-1]["loss"])
    assert {"torch", "transformers", "peft"} <= info["versions"].keys()

    ids = probe_ids(tokenizer)
    trained = res.model
    adapted = logits(trained, ids)
    with trained.disable_adapter():
        base = logits(trained, ids)
    assert (adapted - base).abs().max() > 1e-3, "the adapter did not change the logits"

    reloaded = load_adapter(out, make_model(len(tokenizer)))
    assert torch.equal(logits(reloaded, ids), adapted), "the reloaded adapter gives other logits"

    # the reloaded adapter drives SteeredModel, which calibrates a finite mu_bar on held-out pairs
    steered = SteeredModel.from_peft(reloaded, tokenizer)
    calib = [
        Example(f"c{i}", "toy", f"Q: is {i} even? A:", " yes" if i % 2 == 0 else " no") for i in range(4)
    ]
    result = steered.calibrate(calib, progress=False)
    assert math.isfinite(result.mu) and result.stats["n_examples"] == 4 and result.stats["n_tokens"] >= 4


def test_lora_base_name_recorded(tokenizer, tmp_path):
    out = tmp_path / "o"
    model = make_model(len(tokenizer))
    warmstart(
        examples(), out, fast(max_steps=1), model=model, tokenizer=tokenizer, base="my/base", progress=False
    )
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "my/base"
    assert read_info(out)["base"] == "my/base"


def test_prompt_tuning_text_init(tokenizer, tmp_path):
    out = tmp_path / "o"
    cfg = fast("prompt_tuning", max_steps=1, prompt_init="text", prompt_init_text="the correct answer is")
    res = warmstart(
        examples(), out, cfg, model=make_model(len(tokenizer)), tokenizer=tokenizer, progress=False
    )
    assert res.steps == 1 and is_complete(out)
    ids = probe_ids(tokenizer)
    assert torch.equal(logits(load_adapter(out, make_model(len(tokenizer))), ids), logits(res.model, ids))


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_text_init_equals_prepending_the_text(method, tokenizer, tmp_path):
    """Before training, a text-initialised prompt / prefix is the base model with the text in front
    (checks peft's key/value layout for the prefix). lr=1e-12: one step changes nothing visible."""
    text = "the correct answer is"
    kw = {"prompt_init": "text", "prompt_init_text": text} if method == "prompt_tuning" else {}
    kw = kw or {"prefix_init": "text", "prefix_init_text": text}
    t_ids = tokenizer(text, add_special_tokens=False).input_ids
    cfg = fast(method, lr=1e-12, max_steps=1, num_virtual_tokens=2 * len(t_ids), **kw)
    res = warmstart(examples(), tmp_path / "o", cfg, model=make_model(len(tokenizer)), tokenizer=tokenizer)
    ids = probe_ids(tokenizer)
    prefixed = torch.cat([torch.tensor([t_ids * 2]), ids], dim=1)
    with res.model.disable_adapter():
        want = logits(res.model, prefixed)[:, -ids.shape[1] :]
    torch.testing.assert_close(logits(res.model, ids), want, rtol=1e-4, atol=1e-4)


def test_prefix_sample_vocab_init_is_on_the_scale_of_real_keys(tokenizer, tmp_path):
    cfgs = {
        init: fast("prefix_tuning", lr=1e-12, max_steps=1, prefix_init=init)
        for init in ("random", "sample_vocab")
    }
    scale = {}
    for init, cfg in cfgs.items():
        res = warmstart(
            examples(), tmp_path / init, cfg, model=make_model(len(tokenizer)), tokenizer=tokenizer
        )
        scale[init] = res.model.prompt_encoder["default"].embedding.weight.abs().mean().item()
    assert scale["random"] > 0.5 and scale["sample_vocab"] < 0.5 * scale["random"]


# ---------------------------------------------------------------------------------------------
# Tokenisation and loss masking


def test_collated_labels_mask_prompt_and_padding(tokenizer):
    exs = examples(2)
    exs[1] = Example(id="x", dataset="toy", prompt="Q: yes", answer=" no")
    ds = LazyExamples(exs, tokenizer, max_length=512)
    batch = PadCollator(tokenizer.pad_token_id)([ds[0], ds[1]])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    for row, ex in enumerate(exs):
        p = tokenizer(ex.prompt).input_ids
        a = tokenizer(ex.answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        n = len(p) + len(a)
        ids, labels, mask = batch["input_ids"][row], batch["labels"][row], batch["attention_mask"][row]
        assert ids[:n].tolist() == p + a
        assert (labels[: len(p)] == -100).all(), "prompt positions must not carry a loss"
        assert labels[len(p) : n].tolist() == a, "answer (+eos) positions carry their token ids"
        assert (labels[n:] == -100).all() and (mask[n:] == 0).all() and (mask[:n] == 1).all()
        assert (ids[n:] == tokenizer.pad_token_id).all()
    assert (batch["labels"] != -100).sum() == sum(
        len(tokenizer(e.answer, add_special_tokens=False).input_ids) + 1 for e in exs
    )


def test_truncation_keeps_labels_aligned(tokenizer):
    ex = examples(1)[0]
    p = len(tokenizer(ex.prompt).input_ids)
    enc = encode_example(tokenizer, ex.prompt, ex.answer, max_length=p + 2)
    assert len(enc["input_ids"]) == len(enc["labels"]) == p + 2
    assert enc["labels"][:p] == [-100] * p and enc["labels"][p:] == enc["input_ids"][p:]


def test_dataset_tokenises_lazily(tokenizer):
    calls = []

    class Counting:
        eos_token_id = tokenizer.eos_token_id

        def __call__(self, text, **kw):
            calls.append(text)
            return tokenizer(text, **kw)

    ds = LazyExamples(examples(1000), Counting(), max_length=64)
    assert len(ds) == 1000 and calls == []
    ds[5]
    assert len(calls) == 2  # the prompt and the answer of one example


# ---------------------------------------------------------------------------------------------
# Validation: before training, nothing written


@pytest.mark.parametrize(
    "make_cfg, match",
    [
        (lambda: WarmstartConfig(method="adalora"), "unknown warm-start method 'adalora'"),
        (lambda: WarmstartConfig(method="ia3", lora_r=4), r"lora_r=4 \(--lora-r\) applies only to lora"),
        (lambda: WarmstartConfig(method="lora", num_virtual_tokens=10), "--virtual-tokens"),
        (lambda: WarmstartConfig(method="prefix_tuning", ptuning_hidden=64), "applies only to p_tuning"),
        (lambda: WarmstartConfig(max_steps=3, fraction=0.5), "not both"),
        (lambda: WarmstartConfig(fraction=1.5), "fraction"),
        (lambda: WarmstartConfig(lr=0), "lr=0"),
        (
            lambda: WarmstartConfig(method="ia3", ia3_feedforward_modules=("gate_proj",)),
            "not among the IA3 target",
        ),
        (lambda: WarmstartConfig(method="p_tuning", ptuning_layers=3), "--ptuning-encoder lstm"),
        (lambda: WarmstartConfig(method="prompt_tuning", prompt_init="text"), "give both or neither"),
        (lambda: WarmstartConfig(lr_scheduler="triangle"), "not a transformers scheduler"),
    ],
)
def test_config_errors_before_training(make_cfg, match, tokenizer, tmp_path):
    out = tmp_path / "o"
    with pytest.raises(WarmstartError, match=match):
        warmstart(examples(), out, make_cfg(), model=make_model(len(tokenizer)), tokenizer=tokenizer)
    assert nothing_written(out)


def test_bad_target_module_lists_existing(tokenizer, tmp_path):
    out = tmp_path / "o"
    cfg = WarmstartConfig(lora_target_modules=("q_proj", "query_key_value"))
    with pytest.raises(WarmstartError, match=r"\['query_key_value'\].*q_proj.*v_proj") as err:
        warmstart(examples(), out, cfg, model=make_model(len(tokenizer)), tokenizer=tokenizer)
    assert "gate_proj" in str(err.value) and "down_proj" in str(err.value)
    cfg = WarmstartConfig(method="ia3", ia3_target_modules=("k", "v_proj"), ia3_feedforward_modules=())
    with pytest.raises(WarmstartError, match=r"\['k'\]"):
        warmstart(examples(), out, cfg, model=make_model(len(tokenizer)), tokenizer=tokenizer)
    assert nothing_written(out)


def test_empty_training_set(tokenizer, tmp_path):
    out = tmp_path / "o"
    with pytest.raises(WarmstartError, match="training set is empty"):
        warmstart([], out, fast(), model=make_model(len(tokenizer)), tokenizer=tokenizer)
    assert nothing_written(out)


def test_max_length_truncating_every_answer(tokenizer, tmp_path):
    out = tmp_path / "o"
    shortest = min(len(tokenizer(e.prompt).input_ids) for e in examples())
    with pytest.raises(
        WarmstartError, match=r"8 example\(s\) have prompts of max_length=.*--train-max-length"
    ):
        warmstart(
            examples(), out, fast(max_length=shortest), model=make_model(len(tokenizer)), tokenizer=tokenizer
        )
    assert nothing_written(out)


def test_some_examples_truncated_are_left_out(tokenizer, tmp_path):
    exs = examples(4) + [Example(id="long", dataset="toy", prompt="Q: " * 300, answer=" yes")]
    res = warmstart(
        exs,
        tmp_path / "o",
        fast(max_steps=1, max_length=64),
        model=make_model(len(tokenizer)),
        tokenizer=tokenizer,
    )
    assert res.num_examples == 4 and read_info(tmp_path / "o")["dropped_truncated"] == 1


def test_tokenizer_larger_than_model_vocab(tokenizer, tmp_path):
    out = tmp_path / "o"
    with pytest.raises(WarmstartError, match="tokenizer has 320 tokens but the model only 100"):
        warmstart(examples(), out, fast(), model=make_model(100), tokenizer=tokenizer)
    assert nothing_written(out)


def test_finished_output_refused_without_overwrite(tokenizer, tmp_path):
    out = tmp_path / "o"
    warmstart(examples(), out, fast(max_steps=1), model=make_model(len(tokenizer)), tokenizer=tokenizer)
    with pytest.raises(WarmstartError, match="already holds a finished warm-start"):
        warmstart(examples(), out, fast(max_steps=1), model=make_model(len(tokenizer)), tokenizer=tokenizer)
    res = warmstart(
        examples(),
        out,
        fast(max_steps=2),
        model=make_model(len(tokenizer)),
        tokenizer=tokenizer,
        overwrite=True,
    )
    assert res.steps == 2 and read_info(out)["steps"] == 2 and not partial_dir(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_foreign_output_dir_refused(tokenizer, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(WarmstartError, match="not a finished warm-start; refusing"):
        warmstart(
            examples(), out, fast(), model=make_model(len(tokenizer)), tokenizer=tokenizer, overwrite=True
        )
    assert (out / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------------------------------
# Atomic output, resume, fraction


def test_crash_leaves_only_partial(tokenizer, tmp_path):
    out = tmp_path / "o"
    with pytest.raises(RuntimeError, match="simulated crash"):
        warmstart(
            examples(),
            out,
            fast(),
            model=make_model(len(tokenizer)),
            tokenizer=tokenizer,
            callbacks=[Crash(2)],
        )
    assert not out.exists() and not is_complete(out)
    assert partial_dir(out).is_dir() and not (partial_dir(out) / INFO_NAME).exists()
    with pytest.raises(WarmstartError, match="unfinished run"):
        load_adapter(out, make_model(len(tokenizer)))


@pytest.mark.parametrize("method", ["lora", "p_tuning"])
def test_resume_continues_from_checkpoint(method, tokenizer, tmp_path):
    cfg = fast(method, max_steps=6, save_steps=2)
    ref = warmstart(examples(), tmp_path / "ref", cfg, model=make_model(len(tokenizer)), tokenizer=tokenizer)

    out = tmp_path / "o"
    with pytest.raises(RuntimeError):
        warmstart(
            examples(), out, cfg, model=make_model(len(tokenizer)), tokenizer=tokenizer, callbacks=[Crash(3)]
        )
    assert last_checkpoint(partial_dir(out)).name == "checkpoint-2"

    first = FirstStep()
    res = warmstart(
        examples(),
        out,
        cfg,
        model=make_model(len(tokenizer)),
        tokenizer=tokenizer,
        resume=True,
        callbacks=[first],
    )
    assert first.first == 2 and res.resumed_from_step == 2 and res.steps == 6
    assert [json.loads(x)["step"] for x in (out / LOG_NAME).read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    assert is_complete(out) and not partial_dir(out).exists()
    # the resumed run ends where the uninterrupted one does (for P-Tuning this needs the encoder
    # weights themselves in the checkpoint, not only peft's saved encoder output)
    ids = probe_ids(tokenizer)
    torch.testing.assert_close(logits(res.model, ids), logits(ref.model, ids), rtol=1e-5, atol=1e-5)


def test_resume_refuses_other_options(tokenizer, tmp_path):
    out = tmp_path / "o"
    cfg = fast(max_steps=6, save_steps=2)
    with pytest.raises(RuntimeError):
        warmstart(
            examples(), out, cfg, model=make_model(len(tokenizer)), tokenizer=tokenizer, callbacks=[Crash(3)]
        )
    with pytest.raises(WarmstartError, match=r"lr: 0.01 -> 0.02"):
        warmstart(
            examples(), out, fast(max_steps=6, save_steps=2, lr=2e-2), model=make_model(len(tokenizer)),
            tokenizer=tokenizer, resume=True,
        )  # fmt: skip
    with pytest.raises(WarmstartError, match="training examples differ"):
        warmstart(examples(7), out, cfg, model=make_model(len(tokenizer)), tokenizer=tokenizer, resume=True)
    with pytest.raises(AdapterMismatchError, match="other weights"):
        warmstart(
            examples(), out, cfg, model=make_model(len(tokenizer), seed=1), tokenizer=tokenizer, resume=True
        )
    assert partial_dir(out).is_dir() and not out.exists()


def test_fraction_trains_a_quarter(tokenizer, tmp_path):
    cfg = fast(max_steps=None, fraction=0.25)
    res = warmstart(examples(8), tmp_path / "o", cfg, model=make_model(len(tokenizer)), tokenizer=tokenizer)
    assert res.steps == 2 and read_info(tmp_path / "o")["epochs_done"] == pytest.approx(0.25)


# ---------------------------------------------------------------------------------------------
# Reload checks


def test_load_adapter_refuses_other_base(tokenizer, tmp_path):
    out = tmp_path / "o"
    warmstart(examples(), out, fast(max_steps=1), model=make_model(len(tokenizer)), tokenizer=tokenizer)
    with pytest.raises(AdapterMismatchError, match="vocabulary mismatch.*320.*400"):
        load_adapter(out, make_model(400))
    with pytest.raises(AdapterMismatchError, match="hidden_size"):
        load_adapter(out, make_model(len(tokenizer), hidden=64))
    with pytest.raises(AdapterMismatchError, match="other weights"):
        load_adapter(out, make_model(len(tokenizer), seed=1))
    load_adapter(out, make_model(len(tokenizer), seed=1), strict=False)  # explicitly allowed


# ---------------------------------------------------------------------------------------------
# peft configs and the command line


def test_peft_configs_follow_the_paper():
    lora = peft_config(WarmstartConfig())
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, set(lora.target_modules)) == (
        8,
        16,
        0.1,
        {"q_proj", "v_proj"},
    )
    ia3 = peft_config(WarmstartConfig(method="ia3"))
    assert set(ia3.target_modules) == {"k_proj", "v_proj", "down_proj", "up_proj"}
    assert set(ia3.feedforward_modules) == {"down_proj", "up_proj"}
    pt = peft_config(WarmstartConfig(method="prompt_tuning"))
    assert pt.num_virtual_tokens == 20
    pe = peft_config(WarmstartConfig(method="p_tuning"))
    assert (pe.num_virtual_tokens, pe.encoder_hidden_size, pe.encoder_num_layers) == (20, 128, 2)
    assert peft_config(WarmstartConfig(method="prefix_tuning")).num_virtual_tokens == 20
    d = WarmstartConfig()
    assert (d.lr, d.batch_size, d.max_length, d.epochs) == (5e-5, 1, 512, 1.0)


def test_cli_args_round_trip():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)  # the data seed, from another group
    add_warmstart_args(parser)
    assert warmstart_config_from_args(parser.parse_args([])) == WarmstartConfig()
    ns = parser.parse_args(
        [
            "--peft",
            "p_tuning",
            "--virtual-tokens",
            "10",
            "--ptuning-hidden",
            "64",
            "--fraction",
            "0.0625",
            "--seed",
            "3",
        ]
    )
    cfg = warmstart_config_from_args(ns)
    assert (cfg.method, cfg.num_virtual_tokens, cfg.ptuning_hidden, cfg.fraction, cfg.seed) == (
        "p_tuning", 10, 64, 0.0625, 3,
    )  # fmt: skip
    ns = parser.parse_args(
        ["--peft", "ia3", "--ia3-targets", "k_proj,v_proj,down_proj", "--ia3-feedforward", "down_proj"]
    )
    assert warmstart_config_from_args(ns).ia3_target_modules == ("k_proj", "v_proj", "down_proj")
    # given explicitly for another method: refused even at its default value
    with pytest.raises(WarmstartError, match="--lora-r applies only to lora"):
        warmstart_config_from_args(parser.parse_args(["--peft", "ia3", "--lora-r", "8"]))
    assert parser.parse_args(["--resume", "--overwrite"]).resume is True


def test_config_json_round_trip():
    cfg = WarmstartConfig(
        method="ia3", ia3_target_modules=("k_proj", "down_proj"), ia3_feedforward_modules=("down_proj",)
    )
    again = WarmstartConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(WarmstartError, match="unknown warm-start option"):
        WarmstartConfig.from_dict({"lora_rank": 4})


# ---------------------------------------------------------------------------------------------
# Portable adapters: the recorded base is one plain transformers + peft can load


def test_plain_peft_loads_the_adapter_from_its_recorded_base(tokenizer, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir = tmp_path / "base"
    make_model(len(tokenizer)).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    out = tmp_path / "o"
    res = warmstart(examples(), out, fast(max_steps=2), model=make_model(len(tokenizer)), tokenizer=tokenizer,
                    base=str(base_dir))  # fmt: skip
    recorded = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(base_dir.resolve())
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(recorded), str(out)).eval()
    ids = probe_ids(tokenizer)
    torch.testing.assert_close(logits(plain, ids), logits(res.model, ids))


def test_the_default_model_is_recorded_by_its_hub_id(tokenizer, tmp_path, monkeypatch):
    from svdecode.model import loading as models

    out = tmp_path / "o"
    warmstart(examples(), out, fast(max_steps=1), model=make_model(len(tokenizer)), tokenizer=tokenizer,
              base="default")  # fmt: skip
    assert (
        json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
        == models.DEFAULT_HUB_ID
    )
    assert read_info(out)["base"] == models.DEFAULT_HUB_ID
    # svdecode's own loader still maps the hub id to the local converted copy, offline
    monkeypatch.setattr(models, "default_model_path", lambda: tmp_path / "converted")
    assert models.resolve_model_path(models.DEFAULT_HUB_ID) == str(tmp_path / "converted")
