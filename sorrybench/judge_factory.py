"""Build a refusal judge by name (`build_judge`): the one module that knows every judge class.

Imports run one way: `judges` (labels, `JudgeResult`, `KeywordJudge`) <- `hf_judges` (Hub models) <- this module.
"""

from __future__ import annotations

from typing import Any

from sorrybench.hf_judges import OFFICIAL_JUDGE_MODEL, HFClassifierJudge, HFGenerativeJudge
from sorrybench.judges import JUDGE_NAMES, Judge, KeywordJudge


def build_judge(name: str, *, judge_model: str | None = None, device: Any = "cpu", dtype: str = "float32",
                batch_size: int = 8, refusal_label: str | None = None, max_new_tokens: int = 50,
                keyword_search_chars: int | None = 300) -> Judge:
    """Build a judge by name (one of JUDGE_NAMES).

    Args:
        name: "keyword", "hf_classifier" or "hf_judge".
        judge_model: Hub id / local dir of the classifier or generative judge (required for the hf judges;
            `hf_judge` defaults to the official SORRY-Bench judge when None).
        device: Torch device of the hf judges. dtype: Their weights' dtype ("float32", "bfloat16", ...).
        batch_size: Responses per forward pass of the hf judges.
        refusal_label: hf_classifier only: the `id2label` name or index (as a string) meaning refusal
            (None: a label whose name contains "refus" or "reject").
        max_new_tokens: hf_judge only: tokens the judge may generate.
        keyword_search_chars: keyword only: see `KeywordJudge`.
    """
    if name == "keyword":
        return KeywordJudge(search_chars=keyword_search_chars)
    if name == "hf_classifier":
        if not judge_model:
            raise ValueError("judge hf_classifier needs judge_model (a Hub id or local classifier directory)")
        return HFClassifierJudge.from_pretrained(judge_model, refusal_label=refusal_label, device=device,
                                                 dtype=dtype, batch_size=batch_size)
    if name == "hf_judge":
        return HFGenerativeJudge.from_pretrained(judge_model or OFFICIAL_JUDGE_MODEL, device=device, dtype=dtype,
                                                 batch_size=batch_size, max_new_tokens=max_new_tokens)
    raise ValueError(f"judge: unknown name {name!r}; expected one of {JUDGE_NAMES}")
