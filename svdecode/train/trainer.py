"""``warmstart()``: the short PEFT fine-tune of step 1, through the transformers ``Trainer``, with the
loss on answer tokens only, progress bars, checkpoints and resume.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svdecode.model.fingerprint import base_fingerprint
from svdecode.runs import distributed, rundir
from svdecode.train.base_checks import model_name
from svdecode.train.checkpoints import (
    CHECKPOINT_DIR,
    FORMAT_VERSION,
    INFO_NAME,
    LOG_NAME,
    MANIFEST_NAME,
    REQUEST_NAME,
    TRAINABLE_NAME,
    check_out_dir,
    check_resumable,
    checkpoint_step,
    data_fingerprint,
    finish_publish,
    last_checkpoint,
    partial_dir,
    partial_summary,
    publish,
    trim_log,
    warmstart_request,
    write_json,
)
from svdecode.train.config import (
    PROMPT_METHODS,
    AdapterMismatchError,
    WarmstartConfig,
    WarmstartError,
    validate,
)
from svdecode.train.examples import LazyExamples, LengthScan, PadCollator, pad_id, scan_examples
from svdecode.train.peft_setup import check_model, init_prefix, peft_config, precision_of
from svdecode.versions import dependency_versions

if TYPE_CHECKING:  # pragma: no cover
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

    from svdecode.data import Example


log = logging.getLogger("svdecode")


@dataclass
class WarmstartResult:
    out_dir: Path
    adapter_dir: Path  # the same folder: adapter files sit at its root
    method: str
    final_loss: float | None  # the last logged training loss
    mean_loss: float | None  # mean loss over the run (Trainer's train_loss)
    steps: int  # optimizer steps done (global step)
    seconds: float  # wall time of training
    num_examples: int  # examples trained on (after dropping those without answer tokens)
    resumed_from_step: int | None = None
    model: Any = field(default=None, repr=False)  # the trained PeftModel (eval mode)
    info: dict[str, Any] = field(default_factory=dict, repr=False)


def _trainer_classes():
    """Trainer subclass + callbacks, defined lazily so importing this module stays light."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Trainer, TrainerCallback

    class WarmstartTrainer(Trainer):
        """Saves the exact trainable parameters into each checkpoint, last (the completeness
        marker), and restores them on resume. peft's adapter file alone is not enough for P-Tuning
        and projected prefixes: it holds the encoder's *output*, which cannot be trained further."""

        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            ckpt = (
                Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            if self.args.should_save and ckpt.is_dir():
                state = {
                    n: p.detach().to("cpu").contiguous()
                    for n, p in self.model.named_parameters()
                    if p.requires_grad
                }
                tmp = ckpt / (TRAINABLE_NAME + ".tmp")
                save_file(state, str(tmp))
                os.replace(tmp, ckpt / TRAINABLE_NAME)

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            path = Path(resume_from_checkpoint) / TRAINABLE_NAME
            target = model if model is not None else self.model
            if path.is_file():
                state = load_file(str(path))
                params = dict(target.named_parameters())
                missing = [n for n in state if n not in params]
                if missing:
                    raise AdapterMismatchError(
                        f"checkpoint {resume_from_checkpoint} holds parameters the model lacks: {missing[:5]}"
                    )
                with torch.no_grad():
                    for n, t in state.items():
                        if params[n].shape != t.shape:
                            raise AdapterMismatchError(
                                f"checkpoint {resume_from_checkpoint}: {n} has shape {tuple(t.shape)}, "
                                f"the model {tuple(params[n].shape)}"
                            )
                        params[n].copy_(t.to(params[n].device, params[n].dtype))

    class LossLog(TrainerCallback):
        """Appends one JSON line per logged step to ``train_log.jsonl``."""

        def __init__(self, path: Path):
            self.path = path
            self.last_loss: float | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs or not state.is_world_process_zero:
                return
            rec = {
                "step": state.global_step,
                "epoch": logs.get("epoch", state.epoch),
                "loss": logs["loss"],
                "lr": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
                "time": round(time.time(), 3),
            }
            self.last_loss = float(logs["loss"])
            with self.path.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")

    return WarmstartTrainer, LossLog


def _planned_steps(cfg: WarmstartConfig, n: int) -> int | None:
    """max_steps for the Trainer: cfg.max_steps, or fraction x epochs x update steps per epoch."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    if cfg.fraction is None:
        return None
    per_epoch = max(math.ceil(math.ceil(n / (cfg.batch_size * distributed.world_size())) / cfg.grad_accum), 1)
    return max(1, math.ceil(cfg.fraction * cfg.epochs * per_epoch))


def warmstart(
    examples: Sequence[Example],
    out_dir: str | Path,
    cfg: WarmstartConfig | None = None,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    base: str | None = None,
    manifest: dict[str, Any] | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
    trainer_args: dict[str, Any] | None = None,
) -> WarmstartResult:
    """Warm-start a PEFT adapter on ``examples`` and write it to ``out_dir`` (see the module doc).

    ``model``/``tokenizer``: an already loaded base model (it is wrapped in place by peft; the
    trained ``PeftModel`` comes back as ``result.model``). Without them ``base`` (default
    ``"default"``, SmolLM2-135M-Instruct) is loaded with :func:`svdecode.model.loading.load_base`. ``base``
    is also the name recorded as the adapter's base model (default: the model's own path).
    ``manifest``: the split manifest, saved as ``split_manifest.json``.
    ``resume``: continue an interrupted run from the last checkpoint in ``<out>.partial``
    (without one, start afresh); ``overwrite``: replace a finished ``out_dir``, or discard an
    interrupted run (either is refused without it). ``out_dir`` is locked while the run writes.
    ``callbacks``: extra ``transformers.TrainerCallback`` objects. ``trainer_args``: more
    ``transformers.TrainingArguments`` (e.g. ``{"fsdp": "full_shard", "fsdp_config": PATH}`` or
    ``{"deepspeed": PATH}``), passed through as they are.

    Under ``torchrun`` / ``accelerate launch`` every process calls this; the Trainer trains with
    data parallelism (per-device batch ``cfg.batch_size`` on each process), and only the main
    process checks and writes the directory (:mod:`svdecode.runs.distributed`).

    Every check runs before training and before any directory is created; failures raise
    :class:`WarmstartError` (or :class:`AdapterMismatchError`) saying what to change.
    """
    cfg = cfg or WarmstartConfig()
    validate(cfg)
    if examples is None or len(examples) == 0:
        raise WarmstartError(
            "the training set is empty: nothing to warm-start on (check the data / split / --limit)"
        )
    if not all(hasattr(examples[0], a) for a in ("id", "prompt", "answer")):
        raise WarmstartError(
            f"examples must be svdecode.data.Example objects (id, prompt, answer), got {type(examples[0]).__name__}"
        )
    out = Path(out_dir)
    part = partial_dir(out)
    with rundir.locked(out):
        known_base = base if base is not None else (None if model is not None else "default")
        request_now = warmstart_request(cfg.to_dict(), known_base, examples, manifest)
        distributed.on_main(lambda: _check_dirs(out, part, resume, overwrite, request_now))
        model, tokenizer, base_name = _base_model(model, tokenizer, base)
        check_model(cfg, model, tokenizer)
        scan = _scan_or_refuse(examples, tokenizer, cfg, model)
        request = {
            "format_version": FORMAT_VERSION,
            "config": cfg.to_dict(),
            "base": base_name,
            "base_fingerprint": base_fingerprint(model),
            "tokenizer_size": len(tokenizer),
            "num_examples": len(examples),
            "data_sha256": data_fingerprint(examples),
            "processes": distributed.world_size(),
        }
        resume_ckpt = distributed.on_main(lambda: _resume_point(part, resume, request, model))
        args = _training_args(cfg, part, len(scan.kept), progress, trainer_args)
        # ---- from here on the run writes to disk (the main process only) ----
        distributed.on_main(lambda: _start_partial(part, resume_ckpt, request))
        run = _Prepared(
            examples, out, part, cfg, model, tokenizer, base_name, manifest, scan, request, resume_ckpt, args
        )
        return _train(run, progress=progress, callbacks=callbacks)


def _check_dirs(out: Path, part: Path, resume: bool, overwrite: bool, request: dict[str, Any]) -> None:
    """Before any model loads: finish a half-done publish, refuse what ``out`` must not replace
    (naming how a finished warm-start's ``request`` differs)."""
    finish_publish(out)
    check_out_dir(out, overwrite, request)
    if part.exists() and not resume and not overwrite:
        raise WarmstartError(
            f"an interrupted warm-start is in {part} ({partial_summary(part)}); continue it with "
            "resume=True (--resume), or pass overwrite=True (--overwrite) to discard it and start over"
        )


def _start_partial(part: Path, resume_ckpt: Path | None, request: dict[str, Any]) -> None:
    """The partial directory training writes into: fresh (with the request), or the resumed one
    with its log cut back to the checkpoint."""
    if part.exists() and resume_ckpt is None:
        log.warning("warm-start: removing the interrupted run in %s (%s)", part, partial_summary(part))
        shutil.rmtree(part)
    part.mkdir(parents=True, exist_ok=True)
    log_path = part / LOG_NAME
    if resume_ckpt is None:
        write_json(part / REQUEST_NAME, request)
        log_path.write_text("")
    else:
        trim_log(log_path, checkpoint_step(resume_ckpt))


def _base_model(model, tokenizer, base: str | None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """The base model and tokenizer to train (loaded by name unless given) and the name to record:
    one plain transformers/peft can load (the default model's hub id, a local folder's full path)."""
    from svdecode.model.loading import load_base, portable_base_name

    if model is None:
        model, loaded_tok = load_base(base or "default")
        return model, tokenizer or loaded_tok, portable_base_name(base or "default")
    if tokenizer is None:
        raise WarmstartError("a model was given without its tokenizer; pass tokenizer= as well")
    return model, tokenizer, portable_base_name(base) if base else model_name(model)


def _scan_or_refuse(examples: Sequence[Example], tokenizer, cfg: WarmstartConfig, model) -> LengthScan:
    """Token lengths of every example; refuse a set with no answer token to learn from or with
    sequences longer than the model's positions, and warn about examples left out or cut."""
    scan = scan_examples(examples, tokenizer, cfg)
    if not scan.kept:
        parts = []
        if scan.truncated_away:
            parts.append(
                f"{len(scan.truncated_away)} example(s) have prompts of max_length={cfg.max_length} tokens or "
                "more, so no answer token survives truncation: raise --train-max-length"
            )
        if scan.no_answer:
            parts.append(f"{len(scan.no_answer)} example(s) have an answer that tokenises to nothing")
        raise WarmstartError(
            f"none of the {len(examples)} training examples has an answer token to learn from: "
            + "; ".join(parts)
        )
    for ids, why in (
        (scan.truncated_away, f"whose prompt fills max_length={cfg.max_length} (no answer token left)"),
        (scan.no_answer, "whose answer tokenises to nothing"),
    ):
        if ids:
            log.warning(
                "warm-start: leaving out %d of %d examples %s, e.g. %s",
                len(ids),
                len(examples),
                why,
                ", ".join(ids[:3]),
            )
    if scan.cut:
        log.warning(
            "warm-start: %d example(s) lose part of their answer to max_length=%d", scan.cut, cfg.max_length
        )
    max_pos = getattr(model.config, "max_position_embeddings", None)
    extra = cfg.num_virtual_tokens if cfg.method in PROMPT_METHODS else 0  # prefixes take positions too
    if max_pos and scan.longest + extra > max_pos:
        raise WarmstartError(
            f"the longest training example has {scan.longest} tokens (+{extra} virtual tokens) after truncation "
            f"to max_length={cfg.max_length}, more than the model's {max_pos} positions; pass "
            f"--train-max-length {max_pos - extra} (max_length=...) to cut examples to fit, or shorten them"
        )

    return scan


def _resume_point(part: Path, resume: bool, request: dict[str, Any], model) -> Path | None:
    """The checkpoint to continue from (``resume=True`` and a compatible interrupted run), else None."""
    resume_ckpt: Path | None = None
    if part.exists():
        if resume and (part / REQUEST_NAME).is_file():
            check_resumable(part, request, model)
            resume_ckpt = last_checkpoint(part)
            if resume_ckpt is None:
                log.warning("warm-start: %s has no complete checkpoint yet; starting from step 0", part)
        elif resume:
            log.warning("warm-start: %s is not a resumable run; starting from step 0", part)
    elif resume:
        log.info("warm-start: nothing to resume in %s; starting from step 0", part)

    return resume_ckpt


def _training_args(
    cfg: WarmstartConfig, part: Path, num_examples: int, progress: bool, extra: dict[str, Any] | None = None
):
    """The Trainer's arguments (built before anything is written: bad values fail early);
    ``extra``: more TrainingArguments (FSDP, DeepSpeed), which take precedence."""
    import torch
    from transformers import TrainingArguments

    precision = precision_of(cfg)
    cuda = torch.cuda.is_available()
    max_steps = _planned_steps(cfg, num_examples)
    kwargs: dict[str, Any] = dict(
        output_dir=str(part / CHECKPOINT_DIR),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        max_steps=max_steps if max_steps is not None else -1,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        report_to="none",
        disable_tqdm=not progress,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        use_cpu=not cuda,
        ddp_find_unused_parameters=False,  # every trainable (adapter) parameter takes part in the loss
    )
    kwargs.update(extra or {})
    try:
        return TrainingArguments(**kwargs)
    except (ValueError, TypeError) as err:
        raise WarmstartError(f"the training options are not accepted by transformers: {err}") from err


def _wrap_model(model, tokenizer, cfg: WarmstartConfig, part: Path, out: Path) -> PeftModel:
    """The base model wrapped with the method's freshly initialised adapter (seeded)."""
    from peft import get_peft_model
    from transformers import set_seed

    pcfg = peft_config(cfg)
    text_init = cfg.method == "prompt_tuning" and cfg.prompt_init == "text"
    if text_init:  # peft loads the init tokenizer by path
        distributed.on_main(lambda: tokenizer.save_pretrained(part))
        pcfg.tokenizer_name_or_path = str(part)
    set_seed(cfg.seed)
    peft_model = get_peft_model(model, pcfg)
    if cfg.method == "prefix_tuning" and cfg.prefix_init != "random":
        init_prefix(peft_model, cfg, tokenizer)
    if text_init:
        peft_model.peft_config["default"].tokenizer_name_or_path = str(out)  # the finished folder holds it
    return peft_model


@dataclass
class _Prepared:
    """A checked warm-start ready to train: its data, folders, base model, what it was asked, and
    where it resumes from."""

    examples: Sequence[Example]
    out: Path
    part: Path
    cfg: WarmstartConfig
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    base_name: str
    manifest: dict[str, Any] | None
    scan: LengthScan
    request: dict[str, Any]
    resume_ckpt: Path | None
    args: Any  # transformers.TrainingArguments


def _run_trainer(run: _Prepared, *, progress, callbacks):
    """Wrap the model in the adapter and train it with the transformers Trainer (resuming from
    ``resume_ckpt`` when given); returns the trained model and what the run record needs."""
    from transformers.trainer_callback import PrinterCallback

    examples, out, part, cfg, tokenizer = run.examples, run.out, run.part, run.cfg, run.tokenizer
    model, scan, resume_ckpt, args = run.model, run.scan, run.resume_ckpt, run.args

    peft_model = _wrap_model(model, tokenizer, cfg, part, out)
    WarmstartTrainer, LossLog = _trainer_classes()
    loss_log = LossLog(part / LOG_NAME)
    trainer = WarmstartTrainer(
        model=peft_model,
        args=args,
        train_dataset=LazyExamples(examples, tokenizer, cfg.max_length, cfg.add_eos, scan.kept),
        data_collator=PadCollator(pad_id(tokenizer)),
        callbacks=[loss_log, *callbacks],
    )
    if not progress:
        trainer.remove_callback(PrinterCallback)  # no per-step log dicts on stdout either
    resumed_from = checkpoint_step(resume_ckpt) if resume_ckpt is not None else None
    if resumed_from is not None:
        log.info("warm-start: resuming from %s (step %d)", resume_ckpt, resumed_from)
    t0 = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(resume_ckpt) if resume_ckpt is not None else None)
    seconds = time.perf_counter() - t0
    peft_model.eval()
    return peft_model, trainer.state, output, loss_log, resumed_from, seconds


def _record(run: _Prepared, pc, state, output, loss_log, resumed_from, *, seconds, started, params) -> dict:
    """The warm-start record (warmstart.json): what was asked, what the data and the run were."""
    cfg, base_name, request, tokenizer, examples, scan = (
        run.cfg,
        run.base_name,
        run.request,
        run.tokenizer,
        run.examples,
        run.scan,
    )
    trainable, total = params
    return {
        "format_version": FORMAT_VERSION,
        "status": "complete",
        "method": cfg.method,
        "config": cfg.to_dict(),
        "peft_config": pc.to_dict(),
        "base": base_name,
        "base_fingerprint": request["base_fingerprint"],
        "vocab_size": request["base_fingerprint"]["vocab_size"],
        "tokenizer_size": len(tokenizer),
        "num_examples_given": len(examples),
        "num_examples": len(scan.kept),
        "dropped_truncated": len(scan.truncated_away),
        "dropped_no_answer": len(scan.no_answer),
        "answer_tokens_cut": scan.cut,
        "answer_tokens_per_epoch": scan.answer_tokens,
        "data_sha256": request["data_sha256"],
        "steps": int(state.global_step),
        "planned_steps": int(state.max_steps),
        "epochs_done": state.epoch,
        "resumed_from_step": resumed_from,
        "final_loss": loss_log.last_loss,
        "mean_loss": float(output.training_loss) if output.training_loss is not None else None,
        "train_seconds": round(seconds, 3),
        "total_seconds": round(time.time() - started, 3),
        "trainable_params": int(trainable),
        "total_params": int(total),
        "precision": precision_of(cfg),
        "device": str(run.args.device),
        "processes": int(run.args.world_size),
        # examples per optimizer step: per-device batch x processes x gradient accumulation
        "effective_batch_size": int(cfg.batch_size * run.args.world_size * cfg.grad_accum),
        "parallelism": _parallelism(run.args),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": dependency_versions(),
        "command": " ".join(sys.argv),
    }


def _write_run(run: _Prepared, peft_model, info: dict) -> dict:
    """Write the finished run into the partial directory, record it, then rename it into place."""
    part, tokenizer, manifest = run.part, run.tokenizer, run.manifest
    peft_model.save_pretrained(str(part), save_embedding_layers=False)
    tokenizer.save_pretrained(str(part))
    if manifest is not None:
        write_json(part / MANIFEST_NAME, manifest)
    shutil.rmtree(part / CHECKPOINT_DIR, ignore_errors=True)
    (part / REQUEST_NAME).unlink(missing_ok=True)
    write_json(part / INFO_NAME, info)
    rundir.record_stage(
        part,
        "warmstart",
        warmstart_request(info["config"], run.base_name, run.examples, manifest),
        [p.name for p in part.iterdir() if p.name != CHECKPOINT_DIR and not p.name.startswith(".")],
        extra={"base_fingerprint": info["base_fingerprint"], "tokenizer_size": len(tokenizer)},
    )
    publish(part, run.out)
    return info


def _parallelism(args) -> str:
    """How the Trainer split the work: "single", "ddp", "fsdp" or "deepspeed"."""
    if getattr(args, "deepspeed", None):
        return "deepspeed"
    if getattr(args, "fsdp", None):
        return "fsdp"
    return "ddp" if args.world_size > 1 else "single"


def _train(run: _Prepared, *, progress, callbacks) -> WarmstartResult:
    started = time.time()
    out, cfg, base_name, scan = run.out, run.cfg, run.base_name, run.scan
    peft_model, state, output, loss_log, resumed_from, seconds = _run_trainer(
        run, progress=progress, callbacks=callbacks
    )
    pc = peft_model.peft_config["default"]
    # The adapter records the base by the name given (e.g. "default"), not by a local cache path.
    # It is set only now: during training peft's checkpoint saves would look that name up on the
    # hub to see whether the vocabulary changed; embeddings are never trained here.
    pc.base_model_name_or_path = base_name
    info = _record(
        run, pc, state, output, loss_log, resumed_from,
        seconds=seconds, started=started, params=peft_model.get_nb_trainable_parameters(),
    )  # fmt: skip
    info = distributed.on_main(  # the main process's record (its loss log) on every process
        lambda: _write_run(run, peft_model, info)
    )
    log.info(
        "warm-start: %s adapter written to %s (%d steps, %.1fs)", cfg.method, out, state.global_step, seconds
    )
    return WarmstartResult(
        out_dir=out,
        adapter_dir=out,
        method=cfg.method,
        final_loss=info["final_loss"],
        mean_loss=info["mean_loss"],
        steps=info["steps"],
        seconds=seconds,
        num_examples=len(scan.kept),
        resumed_from_step=resumed_from,
        model=peft_model,
        info=info,
    )
