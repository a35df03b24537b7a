"""Batched sampling of responses with the model's chat template (left padding, seeded).

    responses = generate_responses(model, tokenizer, ["How do I ...?"], num_responses=2, temperature=1.0,
                                   max_new_tokens=256, seed=0)            # -> [["resp 1", "resp 2"]]

The prompt is formatted exactly as the dataset-level trainer formats it (`common.preference_data.format_prompt`:
chat template with one user turn and the generation prompt, or "prompt\\n" for tokenizers without a template),
so the responses are samples of the distribution that training later moves.

`generate_for_prompts` wraps it in `sorrybench.resumable.process_resumably`: one JSONL record per prompt,
appended as each batch completes; a rerun continues with the prompts not done.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from common.preference_data import format_prompt
from common.sequence_logprobs import pad_token_id_of
from sorrybench.resumable import process_resumably


@dataclass(frozen=True)
class GenerationSettings:
    """How responses are sampled.

    Attributes:
        num_responses: Responses per prompt (>= 1). Default 2.
        temperature: Sampling temperature; 0 = greedy decoding (then num_responses must be 1). Default 1.0.
        top_p: Nucleus-sampling mass (1.0 = off). top_k is always off. Default 1.0.
        max_new_tokens: Maximum generated tokens per response. Default 256.
        batch_size: Prompts per `generate` call (each expands to num_responses sequences). Default 8.
        seed: Base seed. A batch is sampled after `torch.manual_seed(seed + crc32(key of its first prompt))`,
            so a resumed run reproduces an uninterrupted one (same batch size and device). Default 0.
    """

    num_responses: int = 2
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.num_responses < 1:
            problems.append(f"num_responses must be >= 1, got {self.num_responses}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.temperature == 0 and self.num_responses > 1:
            problems.append(f"temperature 0 (greedy) gives {self.num_responses} identical responses; "
                            "use num_responses 1 or a temperature > 0")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if problems:
            raise ValueError("generation settings: " + "; ".join(problems))


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt token ids as the trainer builds them: `format_prompt` text; special tokens (BOS) are added by the
    tokenizer only when no chat template is used (a rendered template already contains them)."""
    uses_template = bool(getattr(tokenizer, "chat_template", None))
    return tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=not uses_template)["input_ids"]


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into (input_ids, attention_mask), both of shape (B, max length).

    Example: [[5, 6], [7]] with pad 0 -> input_ids [[5, 6], [0, 7]], attention_mask [[1, 1], [0, 1]].
    """
    length = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq) == 0:
            raise ValueError(f"left_pad: sequence {row} is empty")
        input_ids[row, length - len(seq):] = torch.tensor(list(seq), dtype=torch.long)
        attention_mask[row, length - len(seq):] = 1
    return input_ids, attention_mask


@torch.no_grad()
def generate_responses(model, tokenizer, prompts: Sequence[str], *, num_responses: int = 1,
                       temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 256,
                       seed: int | None = None) -> list[list[str]]:
    """Sample `num_responses` responses per prompt in one left-padded `generate` call.

    Args:
        model: Causal LM (eval mode is set here and restored afterwards).
        tokenizer: Its tokenizer.
        prompts: B user prompts (raw text; formatted with `encode_prompt`).
        num_responses: Responses per prompt. temperature: 0 = greedy. top_p: nucleus mass.
        max_new_tokens: Maximum new tokens per response.
        seed: If not None, `torch.manual_seed(seed)` right before sampling.

    Returns:
        B lists of `num_responses` decoded responses (special tokens removed, surrounding whitespace stripped).
    """
    if not prompts:
        return []
    pad_id = pad_token_id_of(tokenizer)
    device = next(model.parameters()).device
    input_ids, attention_mask = left_pad([encode_prompt(tokenizer, p) for p in prompts], pad_id)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if temperature > 0 \
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    was_training = model.training
    model.eval()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                max_new_tokens=max_new_tokens, num_return_sequences=num_responses,
                                pad_token_id=pad_id, **sampling)
    finally:
        model.train(was_training)
    new_tokens = output[:, input_ids.shape[1]:]  # (B * num_responses, <= max_new_tokens)
    texts = [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return [texts[i * num_responses:(i + 1) * num_responses] for i in range(len(prompts))]


def generate_for_prompts(model, tokenizer, prompts: Sequence[dict], output_path: Path,
                         settings: GenerationSettings, *, model_name: str, key: str = "prompt_index",
                         desc: str = "generating") -> list[dict]:
    """Generate responses for prompt records resumably.

    Args:
        prompts: Records with `key` (unique id), `prompt` and any other fields (copied to the output).
        output_path: JSONL file of result records = the prompt record plus `responses` (list of str).
        settings: Sampling settings. model_name: Recorded with the settings (a resumed run must match).

    Returns:
        One result record per prompt record, in input order.
    """

    # batch_size changes nothing but the seeds; it may differ on resume (e.g. after running out of memory)
    result_settings = {k: v for k, v in asdict(settings).items() if k != "batch_size"}

    def process_batch(batch: list[dict]) -> list[dict]:
        seed = settings.seed + zlib.crc32(json.dumps(batch[0][key]).encode())
        responses = generate_responses(model, tokenizer, [item["prompt"] for item in batch],
                                       num_responses=settings.num_responses, temperature=settings.temperature,
                                       top_p=settings.top_p, max_new_tokens=settings.max_new_tokens, seed=seed)
        return [{**item, "responses": item_responses} for item, item_responses in zip(batch, responses)]

    return process_resumably(prompts, key=key, output_path=output_path, process_batch=process_batch,
                             batch_size=settings.batch_size, settings={"model": model_name, **result_settings},
                             desc=desc)
