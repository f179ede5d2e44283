"""``SteeredModel``: a transformers model whose logits are the steered z_phi + mu * delta_hat.

Because it is a ``PreTrainedModel`` with ``GenerationMixin``, ``generate()`` works unchanged:
greedy, sampling (temperature, top-k, top-p), beam search, stop strings, batched prompts with
padding. It keeps its own :class:`~svdecode.model.kv_cache.StreamCache` (both streams' KV caches),
which ``generate()`` reorders during beam search through ``reorder_cache``.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import GenerationMixin, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast

from svdecode.calibration.calibrate import CalibrationResult, calibrate_streams
from svdecode.calibration.config import CalibrationConfig
from svdecode.calibration.objectives import ChoiceItem, ItemMetric, choice_accuracy
from svdecode.checks import (
    POSITIVE_INT,
    Rule,
    check,
    check_generation,
    check_pairs_fit,
    context_size,
    encode_prompts,
    existing_dir,
)
from svdecode.errors import InputError
from svdecode.model.config import CONFIG_NAME, SteeringConfig
from svdecode.model.kv_cache import StreamCache
from svdecode.model.loading import load_base, load_peft, load_tokenizer, same_adapter_weights
from svdecode.model.scoring import batches, encode_pairs, split_pairs
from svdecode.model.streams import (
    LogitStreams,
    TwoModelStreams,
    adapter_type,
    cache_kwargs,
    make_streams,
    self_check,
    take_cache,
    warn_if_untested,
)
from svdecode.runs import distributed, rundir
from svdecode.steering import Steerer

log = logging.getLogger("svdecode")

# What decides the steered logits: a Steerer, a BatchSteerer (one per row), or any callable
# (z_phi, z_theta) -> fp32 logits. None: the model's own ``steering`` settings.
Steering = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _version() -> str:
    from svdecode import __version__

    return __version__


class SteeredModel(PreTrainedModel, GenerationMixin):
    """Steered decoding and scoring over a PEFT model (or a fine-tuned/base pair).

    Build one with :meth:`from_peft`, :meth:`from_models` or :meth:`from_pretrained`; set the
    strength with :meth:`calibrate` (or ``model.steering.mu = ...``). ``model.steering`` (a
    :class:`SteeringConfig`) holds the settings and the calibration record, ``model.steerer`` the
    :class:`~svdecode.steering.Steerer` they define. ``generate``, ``generate_text``, ``score`` and
    ``forward`` take ``steering=`` another steerer for one call, leaving the model's own unchanged.
    """

    base_model_prefix = "steered"
    # The wrapper runs no attention itself; these only stop transformers from rejecting the
    # wrapped models' attention implementation when it checks the (copied) config.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(
        self,
        streams: LogitStreams,
        steering_config: SteeringConfig | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        check: bool = True,
    ):
        super().__init__(copy.deepcopy(streams.config))
        self.streams = streams
        # Registered so .to(), .device, .dtype and parameters() see the wrapped weights.
        self.wrapped = nn.ModuleList(streams.modules)
        self.steering = steering_config or SteeringConfig()
        self.tokenizer = tokenizer
        # The content hash of the adapter folder this model was loaded from (rundir.adapter_digest):
        # save_pretrained writes only the steering settings into a folder that already holds it.
        self.adapter_digest: str | None = None
        # The calibration that set the current strength (in this process), for reuse by an
        # evaluation asked the same calibration (svdecode.eval.strengths.Calibrator).
        self.last_calibration: CalibrationResult | None = None
        gen_cfg = getattr(streams.modules[0], "generation_config", None)
        if gen_cfg is not None:
            self.generation_config = copy.deepcopy(gen_cfg)
        self.eval()
        if check:  # refuse a transformers whose cache plumbing would silently change the logits
            warn_if_untested()
            log.debug("self-check: cached vs uncached max rel. diff %.2e", self_check(streams, self.device))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_peft(
        cls,
        peft_model,
        tokenizer: PreTrainedTokenizerBase | None = None,
        mixed_batch: bool | None = None,
        **steering_kwargs: Any,
    ) -> SteeredModel:
        """Wrap a ``PeftModel``: base and adapted logits from its one set of weights."""
        streams = make_streams(peft_model, mixed_batch=mixed_batch)
        base_name = getattr(peft_model.active_peft_config, "base_model_name_or_path", None)
        cfg = SteeringConfig(
            base_model=base_name,
            adapter_type=adapter_type(peft_model),
            library_version=_version(),
            **steering_kwargs,
        )
        log.info("steering streams: %s", streams.kind)
        return cls(streams, cfg, tokenizer)

    @classmethod
    def from_models(
        cls,
        adapted: PreTrainedModel,
        base: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
        base_tokenizer: PreTrainedTokenizerBase | None = None,
        **steering_kwargs: Any,
    ) -> SteeredModel:
        """A fully fine-tuned checkpoint and its base model (they must share a tokenizer)."""
        streams = TwoModelStreams(adapted, base, tokenizers=(tokenizer, base_tokenizer))
        cfg = SteeringConfig(
            base_model=getattr(base.config, "name_or_path", None),
            adapted_model=getattr(adapted.config, "name_or_path", None),
            adapter_type="FULL",
            library_version=_version(),
            **steering_kwargs,
        )
        return cls(streams, cfg, tokenizer)

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        directory: str | Path,
        base: str | PreTrainedModel | None = None,
        mixed_batch: bool | None = None,
        dtype: str | torch.dtype | None = torch.float32,
        device: str | torch.device | None = None,
        device_map: str | dict[str, Any] | None = None,
        force: bool = False,
    ) -> SteeredModel:
        """Restore base model + adapter + steering settings saved by :meth:`save_pretrained`.

        ``dtype`` (``"bfloat16"``, ``torch.float16``, ``"auto"``, ...) is the weights' dtype, the
        steering math stays fp32; ``device`` (``"cuda"``, ``"mps"``, ``"cpu"``, ``"auto"``) or
        ``device_map`` (passed to transformers) place the weights. The base must match the
        fingerprint the warm-start recorded; ``force=True`` loads the adapter onto it anyway.
        """
        directory = existing_dir(directory, "steered model directory")
        cfg = SteeringConfig.load(directory)
        entry = rundir.stage_entry(directory, "calibration")
        changed = rundir.modified_outputs(directory, entry) if entry else []
        if changed:
            log.warning(
                "%s: %s changed since svdecode wrote them; using them as they are",
                directory,
                ", ".join(changed),
            )
        place = dict(dtype=dtype, device=device, device_map=device_map)
        if (directory / "adapter_config.json").is_file():
            base_arg = base if base is not None else cfg.base_model
            peft_model = load_peft(directory, base_arg, force=force, **place)
            has_tok = (directory / "tokenizer_config.json").is_file()
            tok = load_tokenizer(
                str(directory) if has_tok else peft_model.active_peft_config.base_model_name_or_path
            )
            streams = make_streams(peft_model, mixed_batch=mixed_batch)
        elif cfg.adapted_model:
            adapted, tok = load_base(cfg.adapted_model, **place)
            base_model, base_tok = (
                (base, None)
                if isinstance(base, PreTrainedModel)
                else load_base(base or cfg.base_model, **place)
            )
            streams = TwoModelStreams(adapted, base_model, tokenizers=(tok, base_tok))
        else:
            raise FileNotFoundError(
                f"{directory} has {CONFIG_NAME} but neither adapter_config.json nor an adapted_model entry"
            )
        model = cls(streams, cfg, tok)
        model.adapter_digest = rundir.adapter_digest(directory)
        return model

    def save_pretrained(  # type: ignore[override]
        self,
        directory: str | Path,
        *,
        overwrite: bool = False,
        request: Mapping[str, Any] | None = None,
        **_: Any,
    ) -> Path:
        """Write adapter, tokenizer and ``steering_config.json`` (last, so a directory is only
        loadable once everything is in place) and record the calibration stage in its run
        manifest (:mod:`svdecode.runs.rundir`), under the directory's lock.

        A directory that holds the adapter this model was loaded from gets only the new steering
        settings. One that holds another run (another adapter, an evaluation) or was written by an
        older svdecode is refused unless ``overwrite=True``, which removes that run's files first
        and names them. ``request``: what the calibration was asked, for the manifest (default:
        the steering settings).
        """
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise InputError(f"output directory {str(directory)!r} is a file, not a directory")
        with rundir.locked(directory):  # under a launcher the main process writes, for all of them
            path, self.adapter_digest = distributed.on_main(lambda: self._save(directory, overwrite, request))
        return path

    def _save(
        self, directory: Path, overwrite: bool, request: Mapping[str, Any] | None
    ) -> tuple[Path, str | None]:
        write_adapter = self._claim(directory, overwrite)
        directory.mkdir(parents=True, exist_ok=True)
        written = self._write_weights(directory, write_adapter)
        self.steering.library_version = _version()
        path = self.steering.save(directory)
        settings = {k: getattr(self.steering, k) for k in ("alpha", "lam", "method", "objective", "mu_bins")}
        rundir.record_stage(
            directory, "calibration", request or {"settings": settings}, [CONFIG_NAME, *written]
        )
        return path, rundir.adapter_digest(directory)

    def _claim(self, directory: Path, overwrite: bool) -> bool:
        """Whether the adapter must be written into ``directory`` (:func:`rundir.claim`)."""
        target = rundir.adapter_digest(directory)
        own = target is not None and (
            target == self.adapter_digest
            or self.adapter_digest is None
            and hasattr(self.wrapped[0], "peft_config")
            and same_adapter_weights(self.wrapped[0], directory)
        )
        return rundir.claim(directory, own, overwrite)

    def _write_weights(self, directory: Path, write_adapter: bool) -> list[str]:
        """Adapter (when asked) and tokenizer (when missing) through a temporary folder."""
        written = []
        with tempfile.TemporaryDirectory(dir=directory, prefix=".saving-") as tmp:
            tmp_path = Path(tmp)
            if write_adapter and hasattr(self.wrapped[0], "peft_config"):
                self.wrapped[0].save_pretrained(tmp_path)
            if self.tokenizer is not None and (
                write_adapter or not (directory / "tokenizer_config.json").is_file()
            ):
                self.tokenizer.save_pretrained(tmp_path)
            for item in sorted(tmp_path.iterdir()):
                target = directory / item.name
                if target.is_dir():
                    shutil.rmtree(target)
                item.replace(target)
                written.append(item.name)
        return written

    # -- the steered distribution --------------------------------------------------------------
    @property
    def steerer(self) -> Steerer:
        """The steerer of the model's current ``steering`` settings."""
        return self.steering.steerer

    def combine(
        self, z_phi: torch.Tensor, z_theta: torch.Tensor, steering: Steering | None = None
    ) -> torch.Tensor:
        """Steered fp32 logits from the two streams' logits, by ``steering`` (default: the model's)."""
        return (self.steerer if steering is None else steering)(z_phi, z_theta)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        position_ids: torch.Tensor | None = None,
        return_dict: bool | None = None,
        steering: Steering | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Steered logits for ``input_ids`` (by ``steering``, default the model's). ``position_ids``
        is accepted for ``generate()`` but each stream derives its positions from
        ``attention_mask`` (virtual tokens shift them)."""
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError(
                "SteeredModel takes input_ids, not inputs_embeds (both streams embed the same tokens)"
            )
        cache = take_cache(kwargs)
        if use_cache is None:
            use_cache = cache is not None
        if use_cache and not isinstance(cache, StreamCache):
            if cache is not None and cache.get_seq_length() > 0:
                raise ValueError(
                    "SteeredModel keeps its own StreamCache; it cannot continue from another cache"
                )
            cache = self.streams.new_cache()
        elif not use_cache:
            cache = None
        if attention_mask is None:  # generate() drops the mask when nothing is padded
            past = cache.get_seq_length() if cache is not None else 0
            attention_mask = input_ids.new_ones(input_ids.shape[0], past + input_ids.shape[1])
        z_phi, z_theta = self.streams(input_ids, attention_mask, cache, logits_to_keep)
        return CausalLMOutputWithPast(logits=self.combine(z_phi, z_theta, steering), **cache_kwargs(cache))

    def _require_tokenizer(self) -> PreTrainedTokenizerBase:
        if self.tokenizer is None:
            raise ValueError("this SteeredModel has no tokenizer; pass tokenizer= when building it")
        return self.tokenizer

    # -- input checks ----------------------------------------------------------------------------
    def context_room(self) -> int | None:
        """How many tokens of input and output fit the model's positions (None: no limit known);
        prompt-learning adapters' virtual tokens take positions too."""
        size = context_size(self.config)
        if size is None:
            return None
        peft_cfg = getattr(self.wrapped[0], "active_peft_config", None)
        virtual = (
            getattr(peft_cfg, "num_virtual_tokens", 0)
            if getattr(peft_cfg, "is_prompt_learning", False)
            else 0
        )
        return size - (virtual or 0)

    def _new_tokens(self, kwargs: Mapping[str, Any]) -> int:
        gen_cfg = kwargs.get("generation_config") or self.generation_config
        return kwargs.get("max_new_tokens") or getattr(gen_cfg, "max_new_tokens", None) or 0

    def generate(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        """``GenerationMixin.generate`` after checking its parameters against the ranges
        transformers defines and the prompt length against the model's context. ``steering=`` a
        steerer decodes this call with it (generate passes it on to :meth:`forward`)."""
        check_generation(kwargs)
        ids = kwargs.get("input_ids", args[0] if args else None)
        room = self.context_room()
        if room is not None and isinstance(ids, torch.Tensor) and ids.ndim == 2:
            new = self._new_tokens(kwargs)
            if ids.shape[1] + new > room:
                raise InputError(
                    f"the input has {ids.shape[1]} tokens and {new} new ones are asked for, more than the "
                    f"model's context of {room} tokens; shorten the input or lower max_new_tokens"
                )
        return super().generate(*args, **kwargs)

    # -- text-level helpers ----------------------------------------------------------------------
    def encode_prompts(
        self, prompts: Sequence[str], max_new_tokens: int = 0, truncate: bool = False
    ) -> list[list[int]]:
        """Token ids of each prompt, checked against the context (``truncate``: keep each one's
        last tokens instead of refusing); an empty prompt starts from the BOS (else EOS) token."""
        return encode_prompts(
            self._require_tokenizer(), prompts, self.context_room(), max_new_tokens, truncate
        )

    def generate_text(
        self,
        prompts: Sequence[str],
        batch_size: int = 8,
        progress: bool = False,
        truncate: bool = False,
        steering: Steering | None = None,
        **generate_kwargs: Any,
    ) -> list[str]:
        """Generate continuations for ``prompts`` (left-padded batches); returns only new text.
        ``steering``: a steerer for this call (default: the model's).

        Prompts longer than the model's context (less ``max_new_tokens``) are refused, or with
        ``truncate=True`` cut to their last tokens; an empty prompt starts from the BOS token."""
        check("batch_size", batch_size, POSITIVE_INT)
        check_generation(generate_kwargs)
        tok = self._require_tokenizer()
        rows = self.encode_prompts(prompts, self._new_tokens(generate_kwargs), truncate)
        tok.padding_side = "left"
        generate_kwargs.setdefault("pad_token_id", tok.pad_token_id)
        if "stop_strings" in generate_kwargs:
            generate_kwargs.setdefault("tokenizer", tok)
        outputs: list[str] = []
        for sl in tqdm(list(batches(len(rows), batch_size)), desc="generating", disable=not progress):
            enc = tok.pad({"input_ids": rows[sl]}, padding=True, return_tensors="pt").to(self.device)
            with torch.no_grad():
                out = self.generate(**enc, steering=steering, **generate_kwargs)
            outputs.extend(tok.batch_decode(out[:, enc.input_ids.shape[1] :], skip_special_tokens=True))
        return outputs

    def _check_pairs(
        self,
        prompts: Sequence[str],
        answers: Sequence[str],
        max_length: int | None,
        batch_size: int,
        trim: float = 0.1,
    ) -> None:
        """Scoring/calibration arguments in range, and every pair within the model's context."""
        check("batch_size", batch_size, POSITIVE_INT)
        check("trim", trim, Rule("float", lo=0, hi=0.5, hi_open=True))
        check_pairs_fit(self._require_tokenizer(), prompts, answers, self.context_room(), max_length)

    def score(
        self,
        prompts: Sequence[str],
        answers: Sequence[str],
        batch_size: int = 8,
        max_length: int | None = None,
        progress: bool = False,
        steering: Steering | None = None,
    ) -> list[torch.Tensor]:
        """Steered log-probabilities of each answer's tokens given its prompt (teacher forcing), by
        ``steering`` (default: the model's).

        Scoring reads answer tokens that may lie outside the confidence mask: with ``lam=-inf``
        they score -inf. Use ``lam=None`` (steer kept tokens, leave the rest) or a finite ``lam``
        for multiple-choice scoring, and report which one was used.
        """
        tok = self._require_tokenizer()
        self._check_pairs(prompts, answers, max_length, batch_size)
        out: list[torch.Tensor] = []
        for sl in tqdm(list(batches(len(prompts), batch_size)), desc="scoring", disable=not progress):
            batch = encode_pairs(tok, prompts[sl], answers[sl], max_length=max_length)
            ids, mask = batch.input_ids.to(self.device), batch.attention_mask.to(self.device)
            z_phi, z_theta = self.streams(ids, mask, None, batch.keep)
            logp = torch.log_softmax(self.combine(z_phi[:, :-1], z_theta[:, :-1], steering), dim=-1)
            tgt = logp.gather(-1, batch.targets.to(self.device).unsqueeze(-1)).squeeze(-1).cpu()
            for row, n in zip(tgt, batch.answer_lengths, strict=True):
                out.append(row[row.shape[0] - n :])
        return out

    def calibrate(
        self,
        pairs: Sequence[Any],
        calibration: CalibrationConfig | None = None,
        *,
        choices: Sequence[ChoiceItem] | None = None,
        choice_metric: ItemMetric = choice_accuracy,
        **kwargs: Any,
    ) -> CalibrationResult:
        """Calibrate the strength on labelled pairs: ``(prompt, answer)`` tuples or objects with
        ``.prompt``/``.answer`` (and ``.id``, e.g. :class:`svdecode.data.Example`).

        How: ``calibration`` (:class:`~svdecode.calibration.config.CalibrationConfig`, default: its
        defaults) with any of its fields given as keywords overriding it, as ``generate`` takes a
        ``GenerationConfig`` -- e.g. ``calibrate(pairs, objective="nll", folds=3)``. ``objective``:
        "nll" (exact minimiser of the steered NLL, default), "task" (best task metric on
        ``choices``), or the paper's "mean"/"median"/"trimmed"/"pooled" (``estimator`` is the old
        name). Every objective is computed and recorded; ``guard`` (k-fold cross-validation,
        ``folds``) turns steering off when the chosen one does not beat mu = 0 on held-out data;
        ``bins`` > 1 also fits strengths per confidence bin, kept only if cross-validation prefers
        them; ``alpha`` (when given) becomes the steering's mask. Sets ``steering.mu`` (and
        ``steering.mu_bins``); the result is kept as ``last_calibration``.
        """
        cfg = CalibrationConfig.resolve(calibration, kwargs).validate()
        prompts, answers = split_pairs(pairs)
        self._check_pairs(prompts, answers, cfg.max_length, cfg.batch_size, cfg.trim)
        if cfg.alpha is not None:
            self.steering.override(alpha=cfg.alpha)
        ids = [str(getattr(p, "id", i)) for i, p in enumerate(pairs)]
        result = calibrate_streams(
            self.streams,
            self._require_tokenizer(),
            prompts,
            answers,
            cfg.replace(alpha=self.steering.alpha),
            method=self.steering.method,
            ids=ids,
            choices=choices,
            choice_metric=choice_metric,
        )
        self.steering.mu = result.mu
        self.steering.objective = cfg.objective
        self.steering.mu_bins = result.mu_bins
        self.steering.calibration = result.stats
        self.last_calibration = result
        return result
