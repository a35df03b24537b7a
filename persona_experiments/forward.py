"""Last-position forward pass: run the transformer body, apply the unembedding to the last prompt token only.

A single-token experiment needs the next-token distribution at the end of the prompt only, so instead of the
model's full forward (which projects every position onto the vocabulary, an (N, L, V) tensor) we run the body
(`model.base_model`, e.g. GPT2Model / LlamaModel) and apply the LM head to the (N, d) hidden states at each
prompt's last position. Gemma-2-style final logit soft-capping is applied when the config sets it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from common.sequence_logprobs import transformer_body, unwrap_model


@dataclass
class LastPositionOutput:
    """Outputs at each prompt's last position.

    Attributes:
        hidden: (N, d) final hidden state h (after the final norm; the input of the unembedding).
        logits: (N, V) float32 logits W h (+ soft-capping).
        logprobs: (N, V) float32 log softmax of the logits.
    """

    hidden: Tensor
    logits: Tensor
    logprobs: Tensor


def body_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module, float | None]:
    """(transformer body, LM head, final logit soft-cap or None) of a causal LM (PEFT-wrapped or not)."""
    inner = unwrap_model(model)
    body = transformer_body(inner)
    head = inner.get_output_embeddings()
    if body is inner or head is None:
        raise ValueError(f"model {type(inner).__name__} has no separate transformer body and LM head "
                         "(expected a *ForCausalLM model)")
    softcap = getattr(inner.config, "final_logit_softcapping", None)
    if getattr(inner.config, "logit_scale", None) not in (None, 1.0):
        raise ValueError(f"model {type(inner).__name__} scales its logits (config.logit_scale); "
                         "the last-position forward does not implement that")
    return body, head, softcap


def unembedding_matrix(model: torch.nn.Module) -> Tensor:
    """The (V, d) unembedding W (LM head weight; tied to the input embedding in many models)."""
    return body_and_head(model)[1].weight


def last_position_forward(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor,
                          last_index: Tensor) -> LastPositionOutput:
    """Hidden state, logits and log-probs at each sequence's last real token.

    Args:
        model: Causal LM.
        input_ids: (N, L) right-padded prompt ids, on the model's device.
        attention_mask: (N, L) 1 on real tokens.
        last_index: (N,) position of each prompt's last real token.

    Returns:
        LastPositionOutput (graph-connected if called with gradients enabled).
    """
    body, head, softcap = body_and_head(model)
    hidden_states = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    hidden = hidden_states[rows, last_index.to(input_ids.device)]  # (N, d)
    logits = head(hidden).float()  # (N, V)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return LastPositionOutput(hidden, logits, F.log_softmax(logits, dim=-1))


def use_sparse_embedding_gradient(model: torch.nn.Module) -> bool:
    """Let the input embedding return a sparse gradient when it is tied to the LM head; True if it now does.

    A persona prompt has ~50 tokens, so the embedding lookup touches ~50 of V rows, yet by default its backward
    builds a dense (V, d) zero tensor, scatters into it, and adds it to the head's gradient (~0.16 s per step for
    SmolLM2-135M). With `sparse=True` autograd adds the ~50 rows to the head's dense (V, d) gradient instead; the
    summed gradient, hence the update, is the same (up to float summation order). Only done when the weight is
    shared with the LM head (else the optimizer would receive a sparse gradient, which RMSprop/Adam reject) and
    trainable (not LoRA).
    """
    inner = unwrap_model(model)
    embedding, head = inner.get_input_embeddings(), inner.get_output_embeddings()
    tied = (isinstance(embedding, torch.nn.Embedding) and head is not None and embedding.weight is head.weight
            and embedding.weight.requires_grad)
    if tied:
        embedding.sparse = True
    return tied
