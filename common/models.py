"""The one model loader: built-in names, local directories and Hub ids, with LoRA, dtype and device placement.

    from common.models import load_model_and_tokenizer, save_model
    model, tokenizer = load_model_and_tokenizer("smollm2-135m-instruct", use_lora=True, lora_rank=8)
    save_model(model, tokenizer, run_dir / "model")          # a LoRA model saves its adapter only

Built-in names are listed in `BUILTIN_MODELS`. Any other name is a local directory written by
`save_pretrained`/`save_model`, or a Hugging Face Hub id (`AutoModelForCausalLM` / `AutoTokenizer`).

Caching:
  * On disk: the built-in models and the SmolLM2 conversion cache live in `common/builtin_models.py`.
  * Truncated weights (`*.safetensors`) or a corrupt tokenizer JSON file in any local directory raise
    ModelLoadError naming the file, before transformers reads them.
  * In process: the pristine weights of each (source, dtype) are kept on the CPU and every call gets an
    independent deep copy, so a plan with many runs reads the weights from disk once. `clear_model_cache()`
    frees them. Not used with `device_map` (accelerate places the weights while reading them). Tokenizers are
    re-read on every call: that is faster than deep-copying one (0.3-0.5 s vs 0.4-1 s).

Tokenizer: a missing pad token is set to the eos token, and padding is on the right: training and log-prob code
mask padding with the attention mask (and response masks), so right padding keeps positions identical to the
unpadded sequence. Generation code that wants left padding sets it on its own tokenizer copy.

LoRA (peft): rank r = `lora_rank`, alpha = 2 r (so the update scale alpha / r = 2), dropout 0, no bias (each
settable: `lora_alpha`, `lora_target_modules`, `lora_dropout`). The adapter records the Hub id of its base model.
Targets: the attention projections (`q_proj`, `k_proj`, `v_proj`, `o_proj` for Llama-style models; `attn.c_attn`
and `attn.c_proj` for GPT-2), else peft's default for the architecture. Adapter B starts at zero, so a freshly
wrapped model computes exactly what the base model computes.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from common.builtin_models import (BUILTIN_MODELS, HUB_IDS, SMOLLM2, TINY_CHAT_TEMPLATE, ModelLoadError,
                                   gpt2_tokenizer, smollm2_dir, tiny_model)
from common.distributed import resolve_device
from common.io_utils import atomic_directory
from common.model_files import tokenizer_file_problems, weights_problems
from common.names import DTYPE_NAMES

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}  # the names of common/names.py as torch dtypes
LORA_ALPHA_PER_RANK = 2
_LLAMA_ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
_BASE_CACHE: dict[tuple, PreTrainedModel] = {}


def clear_model_cache() -> None:
    """Drop the in-process pristine copies (the next call reads from disk again)."""
    _BASE_CACHE.clear()


def _resolve(name: str) -> tuple[str, str]:
    """Map a model name to (kind, location): ("tiny", name), ("local", directory) or ("hub", id)."""
    if name in BUILTIN_MODELS and name != SMOLLM2:
        return "tiny", name
    if name == SMOLLM2:
        return "local", str(smollm2_dir())
    path = Path(name).expanduser()
    if path.is_dir():
        return "local", str(path.resolve())
    # A Hub id is "name" or "org/name"; anything else is meant as a path.
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name):
        state = "is a file, not a directory" if path.exists() else "does not exist"
        raise ModelLoadError(
            f"model {name!r} not found. Tried: built-in names {sorted(BUILTIN_MODELS)} (no match); local "
            f"directory {path.resolve()} ({state}). Fix: use a built-in name, a directory written by "
            f"save_model/save_pretrained, or a Hub id 'org/name'.")
    return "hub", name


def _load_failure(name: str, kind: str, location: str, error: Exception) -> ModelLoadError:
    """One error naming what was tried for `name` and how to fix it."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if kind == "local":
        return ModelLoadError(
            f"model {name!r}: local directory {location} could not be loaded as a causal LM ({reason}). "
            f"Expected config.json, model weights (*.safetensors) and tokenizer files, as written by "
            f"save_model/save_pretrained.")
    return ModelLoadError(
        f"model {name!r} not found. Tried: built-in names {sorted(BUILTIN_MODELS)} (no match); local directory "
        f"{Path(name).expanduser().resolve()} (does not exist); Hugging Face Hub id {name!r} ({reason}). Fix: "
        f"check the spelling, use a built-in name (offline default {SMOLLM2!r}) or a local directory, or go "
        f"online (a Hub model loads offline only once it is in the HF cache; set HF_HUB_OFFLINE=1 to skip the "
        f"network retries).")


def _check_files(name: str, what: str, problems: list[str], fix: str) -> None:
    """ModelLoadError naming the first broken `what` (tokenizer / weights) file of `name`, if any."""
    if problems:
        raise ModelLoadError(f"model {name!r}: {what} file {problems[0]}. Fix: {fix}")


def _from_pretrained(name: str, kind: str, location: str, loader, **kwargs):
    """`loader.from_pretrained(location, **kwargs)`; a failure becomes one ModelLoadError (`_load_failure`)."""
    try:
        return loader.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as error:
        raise _load_failure(name, kind, location, error) from error


def _read_tokenizer(name: str, kind: str, location: str, trust_remote_code: bool) -> PreTrainedTokenizerBase | None:
    """The tokenizer at `location`; None for a local directory without tokenizer files."""
    if kind == "tiny":
        tokenizer = gpt2_tokenizer()
        tokenizer.chat_template = TINY_CHAT_TEMPLATE if location == "tiny-llama" else None
        return tokenizer
    if kind == "local" and not any((Path(location) / f).is_file() for f in ("tokenizer_config.json", "tokenizer.json")):
        return None
    _check_files(name, "tokenizer", tokenizer_file_problems(Path(location)) if kind == "local" else [],
                 f"save the tokenizer again (save_model does), or rerun the run that wrote {location}")
    return _from_pretrained(name, kind, location, AutoTokenizer, trust_remote_code=trust_remote_code)


def load_tokenizer(model: str, *, offline_only: bool = False) -> PreTrainedTokenizerBase | None:
    """The tokenizer of `model` alone (no weights), e.g. for checks before a plan starts.

    Returns None for a local directory without tokenizer files, and, with `offline_only`, for a Hub id (which
    would need the network). Raises ModelLoadError like `load_model_and_tokenizer`."""
    kind, location = _resolve(model)
    if offline_only and kind == "hub":
        return None
    return _read_tokenizer(model, kind, location, False)


def _read_model(name: str, kind: str, location: str, dtype: torch.dtype, trust_remote_code: bool,
                device_map: str | None) -> PreTrainedModel:
    """Read (or build) the weights at `location`, without caching."""
    if kind == "tiny":
        model = tiny_model(location).to(dtype)
        if device_map is not None:  # a few MB: one device is enough
            model.to(resolve_device("auto"))
        return model
    _check_files(name, "weights", weights_problems(Path(location)) if kind == "local" else [],
                 f"rerun the run (or conversion) that wrote {location}, or copy the file again")
    return _from_pretrained(name, kind, location, AutoModelForCausalLM, dtype=dtype, device_map=device_map,
                            trust_remote_code=trust_remote_code)


def _pristine_model(name: str, kind: str, location: str, dtype: str, trust_remote_code: bool,
                    device_map: str | None) -> PreTrainedModel:
    """A fresh, independent model, read from disk at most once per (source, dtype) unless `device_map` is set."""
    if device_map is not None:
        return _read_model(name, kind, location, DTYPES[dtype], trust_remote_code, device_map)
    key = (kind, location, dtype, trust_remote_code)
    if kind == "local":  # a rewritten directory is read again
        key += tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(location).iterdir()))
    if key not in _BASE_CACHE:
        _BASE_CACHE[key] = _read_model(name, kind, location, DTYPES[dtype], trust_remote_code, None)
    return copy.deepcopy(_BASE_CACHE[key])


def _set_padding(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Pad token := eos token if missing; right padding; the model's configs agree with the tokenizer."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"tokenizer of {model.config.name_or_path!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def lora_config(model: PreTrainedModel, rank: int, alpha: float | None = None,
                target_modules: list[str] | None = None, dropout: float = 0.0) -> LoraConfig:
    """LoRA of rank `rank`, scale `alpha` / rank (`alpha` None: 2 rank), on `target_modules` (None: the attention
    projections, see the module docstring), with `dropout` on the adapter input."""
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets, fan_in_fan_out = None, False  # None: peft's default targets for the architecture
    if set(_LLAMA_ATTENTION) <= leaf_names:
        targets = _LLAMA_ATTENTION
    elif model.config.model_type == "gpt2":
        targets, fan_in_fan_out = r".*\.attn\.(c_attn|c_proj)", True  # GPT-2 uses Conv1D (weight is in x out)
    if target_modules is not None:
        targets = list(target_modules)
    return LoraConfig(r=rank, lora_alpha=LORA_ALPHA_PER_RANK * rank if alpha is None else alpha,
                      lora_dropout=dropout, bias="none", target_modules=targets, fan_in_fan_out=fan_in_fan_out,
                      task_type="CAUSAL_LM")


def base_model_id(model: str) -> str:
    """The name a LoRA adapter records as its base model: the Hub id of a built-in converted model
    (`HUB_IDS`), else `model` as given (a built-in test model's name, a Hub id or a local directory)."""
    return HUB_IDS.get(model, model)


def load_model_and_tokenizer(
    model: str, *, checkpoint: str | None = None, is_lora_checkpoint: bool = False, use_lora: bool = False,
    lora_rank: int = 8, dtype: str = "float32", device: str | torch.device = "cpu", device_map: str | None = None,
    trust_remote_code: bool = False, lora_alpha: float | None = None, lora_target_modules: list[str] | None = None,
    lora_dropout: float = 0.0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer.

    Args:
        model: Built-in name (`BUILTIN_MODELS`), local directory, or Hub id.
        checkpoint: Directory written by `save_model`/`save_pretrained` whose weights replace `model`'s: a full
            model, or (with `is_lora_checkpoint`) a peft adapter for `model`. `None` or "" = no checkpoint. A full
            checkpoint without tokenizer files uses `model`'s tokenizer.
        is_lora_checkpoint: `checkpoint` holds a LoRA adapter; it is loaded onto `model` and kept trainable (the
            adapter's own rank applies; `use_lora`/`lora_rank` add nothing).
        use_lora: Wrap the model in a fresh LoRA of rank `lora_rank` (only adapter weights are trainable).
        lora_rank: LoRA rank r >= 1.
        lora_alpha, lora_target_modules, lora_dropout: see `lora_config` (defaults: alpha 2 r, the attention
            projections, dropout 0). A new adapter records `base_model_id(model)` as its base model (the Hub id,
            not the local cache directory of a converted built-in model).
        dtype: Parameter dtype: "float32", "bfloat16" or "float16".
        device: Device the model is moved to (ignored with `device_map`).
        device_map: e.g. "auto" to spread a large model over the visible GPUs (accelerate); skips the
            in-process cache.
        trust_remote_code: Allow model code from the Hub repository to run. Off unless a config asks for it.

    Returns:
        (model, tokenizer): an independent copy each call; a `peft.PeftModel` when LoRA is used.

    Raises:
        ModelLoadError: the model, checkpoint or a package shipping a built-in model cannot be found.
        ValueError: unknown dtype, lora_rank < 1.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")
    if use_lora and lora_rank < 1:
        raise ValueError(f"lora_rank must be >= 1 when use_lora is true, got {lora_rank}")
    ckpt = Path(checkpoint).expanduser() if checkpoint else None
    if ckpt is not None:
        if not ckpt.is_dir():
            raise ModelLoadError(f"checkpoint {checkpoint!r}: directory {ckpt.resolve()} does not exist. Expected "
                                 f"a directory written by save_model/save_pretrained (e.g. '<run dir>/model' of a run "
                                 f"with save_model=true that finished).")
        has_adapter = (ckpt / "adapter_config.json").is_file()
        if has_adapter != is_lora_checkpoint:
            found = "a LoRA adapter (adapter_config.json)" if has_adapter else "no adapter_config.json"
            raise ModelLoadError(f"checkpoint {checkpoint!r} holds {found}, but is_lora_checkpoint is "
                                 f"{is_lora_checkpoint}. Fix: set is_lora_checkpoint to {has_adapter}.")
    full_checkpoint = ckpt is not None and not is_lora_checkpoint
    source = str(ckpt) if full_checkpoint else model
    kind, location = _resolve(source)
    tokenizer = _read_tokenizer(source, kind, location, trust_remote_code)  # first: a wrong Hub id fails fast
    if tokenizer is None:
        if not full_checkpoint:
            raise ModelLoadError(f"model {model!r}: local directory has no tokenizer files (tokenizer_config.json "
                                 f"or tokenizer.json). Fix: save the tokenizer there too (save_model does).")
        tokenizer = _read_tokenizer(model, *_resolve(model), trust_remote_code)
    net = _pristine_model(source, kind, location, dtype, trust_remote_code, device_map)
    _set_padding(net, tokenizer)
    if ckpt is not None and is_lora_checkpoint:
        broken = weights_problems(ckpt)
        if broken:
            raise ModelLoadError(f"checkpoint {checkpoint!r}: adapter weights file {broken[0]}. Fix: rerun the run "
                                 f"that wrote {ckpt}")
        net = PeftModel.from_pretrained(net, str(ckpt), is_trainable=True)
    elif use_lora:
        net = get_peft_model(net, lora_config(net, lora_rank, lora_alpha, lora_target_modules, lora_dropout))
    if isinstance(net, PeftModel) and not full_checkpoint:  # saved adapters name their base by its Hub id
        for adapter_config in net.peft_config.values():
            adapter_config.base_model_name_or_path = base_model_id(model)
    if device_map is None:
        net.to(device)
    return net, tokenizer


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path,
               state_dict: dict | None = None) -> Path:
    """Write `model` and `tokenizer` to `out_dir` (replaced atomically, files 0666 minus the umask) as a loadable
    HF directory; `state_dict` (e.g. gathered from FSDP shards) replaces the model's own weights when given.

    A `peft.PeftModel` saves its adapter only (adapter_config.json + adapter_model.safetensors), nothing merged:
    load it back with `checkpoint=out_dir, is_lora_checkpoint=True` and the same base `model`.
    Returns `out_dir`.
    """
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, **({} if state_dict is None else {"state_dict": state_dict}))
        tokenizer.save_pretrained(tmp)
    return out_dir
