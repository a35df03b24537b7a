"""One home per helper: the pad-id rule and the model body (`common.sequence_logprobs`), shared names
(`common.names`), and the callers that use them instead of their own copies."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from peft import LoraConfig, get_peft_model

from ches.ches import base_transformer
from ches.results_file import MEASURE_NAMES
from common.models import load_model_and_tokenizer
from common.names import DTYPE_NAMES, SIMILARITY_MEASURE_NAMES
from common.sequence_logprobs import pad_token_id_of, transformer_body
from persona_experiments.forward import body_and_head


def test_pad_token_id_rule() -> None:
    assert pad_token_id_of(SimpleNamespace(pad_token_id=0, eos_token_id=2)) == 0  # 0 is a real id
    assert pad_token_id_of(SimpleNamespace(pad_token_id=None, eos_token_id=2)) == 2
    with pytest.raises(ValueError, match="neither a pad nor an EOS token"):
        pad_token_id_of(SimpleNamespace(pad_token_id=None, eos_token_id=None))


@pytest.mark.parametrize(("name", "body_attribute"), [("tiny-gpt2", "transformer"), ("tiny-llama", "model")])
def test_transformer_body_of_plain_peft_and_bare_models(name: str, body_attribute: str) -> None:
    model, _ = load_model_and_tokenizer(name)
    body = getattr(model, body_attribute)
    assert transformer_body(model) is body
    assert transformer_body(body) is body  # already bare
    assert base_transformer is transformer_body  # ches.ches keeps its old name
    assert body_and_head(model)[0] is body
    target = ["c_attn"] if name == "tiny-gpt2" else ["q_proj"]
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=target))
    assert transformer_body(wrapped) is body


def test_shared_names() -> None:
    assert DTYPE_NAMES == ("float32", "bfloat16", "float16")
    assert MEASURE_NAMES is SIMILARITY_MEASURE_NAMES
    assert SIMILARITY_MEASURE_NAMES == ("ches_scores", "ln_ches_scores", "minus_normalized_edit_distances",
                                        "last_hidden_embedding_inner_prods")
