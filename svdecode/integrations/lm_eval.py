"""lm-evaluation-harness plug-in: the lm-eval model ``svdecode`` and the offline ``svdecode_*`` tasks.

``import svdecode.integrations.lm_eval`` registers the model; ``svdecode lm-eval ...`` (:func:`main`)
runs lm-eval's own command line with it registered and :data:`TASKS_DIR` on the include path.

The model is lm-eval's :class:`~lm_eval.models.huggingface.HFLM` with one thing swapped: the
``transformers`` model it drives is a :class:`~svdecode.model.steered_model.SteeredModel` built from the
adapter, so HFLM's own batching, tokenisation, truncation, request reordering and data-parallel
plumbing run unchanged on the steered logits z_phi + mu * delta_hat:

* ``loglikelihood`` / ``loglikelihood_rolling`` read the steered logits in the **scoring mode**
  (``lam=None``: the kept tokens are steered, the others keep z_phi, so every continuation gets a
  finite score) -- the mode ``SteeredModel.score`` documents for multiple choice;
* ``generate_until`` runs ``SteeredModel.generate`` with the artifact's generation ``lam``
  (paper: -inf), with HFLM's stop sequences and ``max_gen_toks``.

Both modes are recorded under ``svdecode`` in the results' model info.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from svdecode.model.config import CONFIG_NAME, ConfigError, SteeringConfig
from svdecode.model.loading import (
    ModelLoadError,
    load_peft,
    read_adapter_config,
    resolve_device,
    resolve_dtype,
    resolve_model_path,
)
from svdecode.model.steered_model import SteeredModel

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

# A child of lm-eval's logger, so these lines print with lm-eval's own (which does not propagate).
log = logging.getLogger("lm_eval").getChild("svdecode")

TASKS_DIR = Path(__file__).with_name("lm_eval_tasks")
TAGS = ("svdecode", "svdecode_commonsense", "svdecode_truthfulqa")
# lm-eval's hub task -> our offline twin (a hint when the hub cannot be reached)
OFFLINE_TWINS = {
    name: f"svdecode_{name}"
    for name in (
        "truthfulqa_mc1",
        "truthfulqa_mc2",
        "arc_easy",
        "arc_challenge",
        "boolq",
        "openbookqa",
        "social_iqa",
        "winogrande",
        "piqa",
        "hellaswag",
    )
}
MODEL_ARGS = (
    "adapter",
    "pretrained",
    "mu",
    "alpha",
    "two_pass",
    "batch_size",
    "max_batch_size",
    "dtype",
    "device",
    "max_length",
)
SCORING_MODE = "lam=None (scoring mode: tokens outside the confidence mask keep their adapted logit z_phi)"


class ModelArgsError(ValueError):
    """A ``--model_args`` value the ``svdecode`` model cannot use."""


class UnknownTaskError(ValueError):
    """An ``svdecode*`` task name this package does not ship."""


def task_names() -> list[str]:
    """The tasks and tags this package ships (``svdecode_*.yaml`` in :data:`TASKS_DIR`)."""
    return sorted([p.stem for p in TASKS_DIR.glob("svdecode_*.yaml")] + list(TAGS))


# -- model_args, checked before any weights load -----------------------------------------------------


@dataclass
class SVDecodeArgs:
    """The ``svdecode`` model's arguments, checked and resolved."""

    adapter: Path
    base: str  # local path or hub id of the base model
    tokenizer: str
    steering: SteeringConfig  # mu and alpha applied; lam is the generation lam
    mu_source: str
    two_pass: bool
    batch_size: int | str
    max_batch_size: int
    dtype: str
    device: str
    max_length: int | None


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ModelArgsError(f"model_args {name}={value!r}: expected a finite number")
    try:
        number = float(value)
    except ValueError:
        raise ModelArgsError(f"model_args {name}={value!r}: expected a finite number") from None
    if not math.isfinite(number):
        raise ModelArgsError(f"model_args {name}={value!r}: must be finite")
    return number


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1:
        raise ModelArgsError(f"model_args {name}={value!r}: expected a positive integer")
    return int(value)


def _batch_size(value: Any) -> int | str:
    if str(value).startswith("auto"):
        mult = str(value).partition(":")[2]
        if mult:
            _finite("batch_size (auto:N)", mult)
        return str(value)
    return _positive_int("batch_size", value)


def _steering(adapter: Path, mu: Any, alpha: Any) -> tuple[SteeringConfig, str]:
    """The artifact's steering settings (if any) with the model_args' mu and alpha applied."""
    saved = (adapter / CONFIG_NAME).is_file()
    if mu is None and not saved:
        raise ModelArgsError(
            f"{adapter} has no {CONFIG_NAME}, so there is no calibrated steering strength: pass mu=<number> "
            f"in model_args, or calibrate first (svdecode calibrate --adapter {adapter} --data ... --out {adapter})"
        )
    cfg = SteeringConfig.load(adapter) if saved else SteeringConfig()
    try:
        cfg.override(
            mu=None if mu is None else _finite("mu", mu),
            alpha=None if alpha is None else _finite("alpha", alpha),
        )
    except ConfigError as err:
        raise ModelArgsError(f"model_args: {err}") from err
    return cfg, "model_args" if mu is not None else str(adapter / CONFIG_NAME)


def check_adapter_fits(adapter: Path, adapter_cfg: dict[str, Any], base: str) -> None:
    """Refuse an adapter trained for another architecture, from configs and tensor shapes only.

    The base is built on the meta device (no weights) and wrapped with the adapter's config; every
    tensor in ``adapter_model.safetensors`` must exist in it with the same shape. Loading would fail
    later anyway, but only after reading all the base weights, and with peft's less direct message.
    """
    from accelerate import init_empty_weights
    from peft import PeftConfig, get_peft_model, get_peft_model_state_dict
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(base)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"pretrained={base!r}: cannot read its model config ({err})") from err
    recorded = adapter_cfg.get("base_model_name_or_path")
    peft_cfg = PeftConfig.from_pretrained(str(adapter))
    if peft_cfg.is_prompt_learning:
        expected = {"token_dim": config.hidden_size, "num_layers": config.num_hidden_layers}
        wrong = {k: (getattr(peft_cfg, k), v) for k, v in expected.items() if getattr(peft_cfg, k) != v}
    else:
        weights = adapter / "adapter_model.safetensors"
        if not weights.is_file():
            return  # a legacy .bin adapter: shapes only show when peft loads it
        with init_empty_weights(), warnings.catch_warnings():
            # peft notes that the config's recorded base differs from the skeleton's (nameless) one
            warnings.simplefilter("ignore", UserWarning)
            skeleton = get_peft_model(AutoModelForCausalLM.from_config(config), peft_cfg)
        shapes = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(skeleton).items()}
        with safe_open(str(weights), "pt") as fh:
            saved = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
        wrong = {k: (v, shapes.get(k)) for k, v in saved.items() if shapes.get(k) != v}
    if wrong:
        key, (have, want) = next(iter(wrong.items()))
        raise ModelLoadError(
            f"the adapter in {str(adapter)!r} (trained on {recorded!r}) does not fit pretrained={base!r}: "
            f"{len(wrong)} mismatch(es), e.g. {key}: adapter {have}, base model {want}. "
            "Leave pretrained out to use the adapter's own base."
        )


def resolve_model_args(
    adapter: str | None = None,
    pretrained: str | None = None,
    mu: Any = None,
    alpha: Any = None,
    two_pass: bool = False,
    batch_size: int | str = 1,
    max_batch_size: int | None = 64,
    dtype: str = "float32",
    device: str | None = None,
    max_length: int | None = None,
    **unknown: Any,
) -> SVDecodeArgs:
    """Check the ``svdecode`` model_args and resolve them, reading configs but no weights."""
    if unknown:
        raise ModelArgsError(
            f"unknown model_args key(s) {sorted(unknown)} for model svdecode; accepted: {', '.join(MODEL_ARGS)}"
        )
    if not isinstance(two_pass, bool):
        raise ModelArgsError(f"model_args two_pass={two_pass!r}: expected true or false")
    if not adapter:
        raise ModelArgsError(
            "model_args adapter=<dir> is required: a directory written by svdecode warmstart/run/calibrate"
        )
    adapter_dir = Path(str(adapter)).expanduser()
    adapter_cfg = read_adapter_config(adapter_dir)
    steering, mu_source = _steering(adapter_dir, mu, alpha)
    try:
        torch_dtype = resolve_dtype(dtype)
        dev = resolve_device(device) or resolve_device("auto")
    except ValueError as err:
        raise ModelArgsError(f"model_args: {err}") from err
    base = resolve_model_path(
        str(pretrained or adapter_cfg.get("base_model_name_or_path") or steering.base_model or "default")
    )
    check_adapter_fits(adapter_dir, adapter_cfg, base)
    has_tok = (adapter_dir / "tokenizer_config.json").is_file()
    return SVDecodeArgs(
        adapter=adapter_dir,
        base=base,
        tokenizer=str(adapter_dir) if has_tok else base,
        steering=steering,
        mu_source=mu_source,
        two_pass=two_pass,
        batch_size=_batch_size(batch_size),
        max_batch_size=_positive_int("max_batch_size", max_batch_size if max_batch_size is not None else 64),
        dtype=str(torch_dtype).removeprefix("torch."),
        device=str(dev),
        max_length=None if max_length is None else _positive_int("max_length", max_length),
    )


def merge_cli_config(model_args: dict[str, Any], cli: dict[str, Any] | None) -> dict[str, Any]:
    """model_args plus the settings simple_evaluate adds from its own flags (--batch_size, always,
    default 1; --max_batch_size; --device, default "cuda:0" even without a GPU).

    A key in model_args wins (passing both would be a duplicate-keyword TypeError). A flag's
    device that this machine lacks falls back to the automatic choice, as HFLM does with it; a
    device named in model_args must exist.
    """
    extra = {k: v for k, v in (cli or {}).items() if v is not None and k not in model_args}
    if "device" in extra:
        try:
            resolve_device(extra["device"])
        except ValueError:
            log.warning(
                "device %s is not available here; using %s", extra.pop("device"), resolve_device("auto")
            )
    return {**model_args, **extra}


# -- the model ------------------------------------------------------------------------------------


@register_model("svdecode")
class SVDecodeLM(HFLM):
    """HFLM over a :class:`SteeredModel`: ``--model svdecode --model_args adapter=DIR[,mu=..,alpha=..]``.

    model_args: ``adapter`` (required), ``pretrained`` (default: the adapter's recorded base),
    ``mu`` (default: ``steering_config.json``), ``alpha``, ``two_pass`` (LoRA: two forward passes
    instead of one mixed-adapter batch), and HFLM's ``batch_size``, ``max_batch_size``, ``dtype``
    (default float32), ``device`` (default: cuda if available, else cpu), ``max_length``.
    """

    def __init__(self, **model_args: Any) -> None:
        self.svdecode_args = args = resolve_model_args(**model_args)
        super().__init__(
            pretrained=args.base,
            tokenizer=args.tokenizer,
            dtype=args.dtype,
            device=args.device,
            batch_size=args.batch_size,
            max_batch_size=args.max_batch_size,
            max_length=args.max_length,
        )
        self._shard_across_processes()
        st = self.steerer
        log.info(
            "svdecode: adapter %s on %s, method %s, mu=%.6g (%s), alpha=%g; loglikelihood: %s; generate_until: lam=%s",
            args.adapter, args.base, st.method, st.mu, args.mu_source, st.alpha, SCORING_MODE, st.lam,
        )  # fmt: skip

    @classmethod
    def create_from_arg_obj(
        cls, arg_dict: dict[str, Any], additional_config: dict[str, Any] | None = None
    ) -> SVDecodeLM:
        return cls(**merge_cli_config(arg_dict, additional_config))

    @classmethod
    def create_from_arg_string(
        cls, arg_string: str, additional_config: dict[str, Any] | None = None
    ) -> SVDecodeLM:
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    def _create_model(self, pretrained: str, dtype: str | torch.dtype | None = "float32", **_: Any) -> None:
        """Build the SteeredModel with svdecode's loader (called by HFLM.__init__ in place of its
        own, whose peft/delta/quantisation options this model does not offer)."""
        args = self.svdecode_args
        peft_model = load_peft(args.adapter, pretrained, dtype=dtype, device=self.device)
        model = SteeredModel.from_peft(
            peft_model, self.tokenizer, mixed_batch=False if args.two_pass else None
        )
        steering = args.steering
        steering.base_model = steering.base_model or model.steering.base_model
        steering.adapter_type = steering.adapter_type or model.steering.adapter_type
        model.steering = steering
        self._model = model
        # generate_until decodes with the artifact's settings, log-likelihoods in the scoring mode
        self.steerer = steering.steerer
        self.scoring_steerer = self.steerer.replace(lam=None)

    def _shard_across_processes(self) -> None:
        """Under ``accelerate launch`` HFLM shards requests only when it counts more than one GPU; on
        CPU (or one GPU) every process would evaluate every request. The evaluator's sharding and
        gathering need only rank and world size from the launcher, so take them from accelerate."""
        acc = getattr(self, "accelerator", None)
        if acc is not None and acc.num_processes > 1 and self.world_size == 1:
            self._rank, self._world_size = acc.process_index, acc.num_processes

    def _model_call(
        self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        # Every log-likelihood request (and batch-size detection) comes through here: the scoring
        # steerer (HFLM's own call, for a causal LM, is self.model(inps).logits under no_grad).
        with torch.no_grad():
            return self.model(inps, steering=self.scoring_steerer).logits

    def _model_generate(
        self, context: torch.Tensor, max_length: int, stop: list[str], **kwargs: Any
    ) -> torch.Tensor:
        return super()._model_generate(context, max_length, stop, steering=self.steerer, **kwargs)

    def get_model_info(self) -> dict[str, Any]:
        info = super().get_model_info()
        st, args = self.steerer, self.svdecode_args
        info["svdecode"] = {
            "adapter": str(args.adapter),
            "base": args.base,
            "adapter_type": self.model.steering.adapter_type,
            "streams": self.model.streams.kind,
            "method": st.method,
            "mu": st.mu,
            "mu_source": args.mu_source,
            "mu_bins": st.mu_bins.to_json() if st.mu_bins else None,
            "alpha": st.alpha,
            "loglikelihood": SCORING_MODE,
            "generate_until_lam": repr(st.lam),
        }
        return info


def task_manager(**kwargs: Any) -> TaskManager:
    """An lm-eval ``TaskManager`` that also knows the ``svdecode_*`` tasks (kwargs: TaskManager's)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), **kwargs)


# -- `svdecode lm-eval` --------------------------------------------------------------------------------


def check_task_names(tasks: Sequence[str]) -> None:
    """Refuse ``svdecode*`` names we do not ship (before lm-eval indexes its thousands of YAMLs);
    warn when an lm-eval hub task has an offline twin here and the hub is off."""
    ours = task_names()
    names = [t for item in tasks for t in str(item).split(",") if t]
    unknown = [t for t in names if t.startswith("svdecode") and t not in ours]
    if unknown:
        raise UnknownTaskError(f"unknown task(s) {', '.join(unknown)}; svdecode ships: {', '.join(ours)}")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        for t in names:
            if t in OFFLINE_TWINS:
                log.warning(
                    "%s reads its dataset from the hub (offline here); %s is its offline twin",
                    t,
                    OFFLINE_TWINS[t],
                )


def main(argv: Sequence[str]) -> int:
    """``svdecode lm-eval <lm-eval arguments>``: lm-eval's command line, unchanged, with the model
    ``svdecode`` registered and :data:`TASKS_DIR` added to ``--include_path``."""
    from lm_eval._cli import HarnessCLI  # what lm-eval's own entry point (lm_eval.__main__) runs
    from lm_eval.utils import setup_logging

    from svdecode.integrations.lm_eval_tasks.loaders import TaskDataError, data_root

    setup_logging()
    saved, sys.argv = sys.argv, ["svdecode lm-eval", *argv]
    try:  # HarnessCLI parses sys.argv itself (and inserts `run` for the legacy form)
        cli = HarnessCLI()
        ns = cli.parse_args()
    finally:
        sys.argv = saved
    if getattr(ns, "command", None) in ("run", "ls", "validate"):  # all three take --include_path
        ns.include_path = [str(TASKS_DIR), *([ns.include_path] if ns.include_path else [])]
    try:
        if getattr(ns, "command", None) == "run" and ns.tasks:
            check_task_names(ns.tasks)
            if any(str(t).startswith("svdecode") for t in ns.tasks):
                data_root((ns.metadata or {}).get("svdecode_data"))
            if ns.model == "svdecode":  # fail on bad model_args before lm-eval loads anything
                flags = {k: getattr(ns, k, None) for k in ("batch_size", "max_batch_size", "device")}
                resolve_model_args(**merge_cli_config(ns.model_args or {}, flags))
        cli.execute(ns)
    except (ModelArgsError, UnknownTaskError, ModelLoadError, ConfigError, TaskDataError) as err:
        print(f"svdecode lm-eval: error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # lm-eval's own input errors, e.g. "Tasks not found: ..."
        if not str(err).startswith("Tasks not found"):
            raise
        print(f"svdecode lm-eval: error: {err} (svdecode ships: {', '.join(task_names())})", file=sys.stderr)
        return 2
    return 0
