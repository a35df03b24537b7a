"""Create the SORRY-Bench preference data set: sample responses, judge them, build pairs, split 85/15.

Steps (all outputs in `output_dir`; the first two are resumable, so a rerun continues where it stopped):
    1. generations.jsonl   `num_responses` sampled responses per SORRY-Bench prompt (`sorrybench.generation`)
    2. judgments.jsonl     the judge's label / refusal score / raw verdict per response
    3. rewards.jsonl       reward of each response (only with a reward model)
    4. train.jsonl, test.jsonl   one pair per prompt (`sorrybench.pairs.build_pair`), seeded split
    5. dataset_info.json   settings, counts per pair type, skipped prompts by reason, initial refusal rate
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from common.io_utils import atomic_write_json, atomic_write_text
from sorrybench.generation import GenerationSettings, generate_for_prompts
from sorrybench.judges import Judge, build_judge
from sorrybench.pairs import RewardModelScorer, build_pair, load_gold_refusals, split_train_test
from sorrybench.prompts import load_sorrybench_prompts
from sorrybench.refusal_rate import compute_refusal_rates, judge_generations
from sorrybench.resumable import count_missing, process_resumably, settings_path_for

RewardFn = Callable[[Sequence[str], Sequence[str]], list[float]]


@dataclass
class DatasetOptions:
    """Options of `create_preferences_dataset` (the command line of sorrybench_create_preferences_dataset.py).

    Attributes:
        output_dir: Directory of all outputs (created).
        model: Model whose responses are sampled (built-in name, Hub id or local dir). Default smollm2-135m-instruct.
        prompts_path: SORRY-Bench csv/jsonl or Hub id; None = data_files/sorrybench/sorry_bench_202406.csv by the
            data-location rule (common/data_locations.py), else the Hub id.
        num_prompts: Subsample this many prompts (seeded by `prompt_seed`); None = all 450.
        categories: Keep only these categories ("1".."45"); None = all.
        prompt_seed: Seed of the prompt subsample. Default 0.
        generation: Sampling settings (num_responses 2, temperature 1.0, max_new_tokens 256, ...).
        judge: keyword | hf_classifier | hf_judge. Default keyword.
        judge_model: Model of the hf judges (hf_judge default: the official SORRY-Bench judge).
        judge_refusal_label: hf_classifier: the label name/index meaning refusal.
        judge_batch_size: Responses per judge forward pass. Default 8.
        reward_model: Sequence classifier used to break ties (None = the "shortest" rule).
        reward_label_index: Which logit of the reward model is the reward. Default 0.
        gold_refusals_path: Gold refusals file (gold mode; see `sorrybench.pairs.load_gold_refusals`).
        gold_prompts: Gold mode: "with_refusal" (the model pairs with the gold refusal as chosen response) or
            "all" (every prompt with a usable response); see `sorrybench.pairs.build_pair`. Default "with_refusal".
        reuse_generations_from: Directory of an earlier run whose generations.jsonl (+ settings) is copied into
            `output_dir` first, so e.g. a gold-mode data set pairs the same responses without regenerating
            (the settings must match, as for a resumed run). None = off.
        test_fraction: Share of pairs in test.jsonl. Default 0.15.
        split_seed: Seed of the train/test split. Default 0.
        device: Torch device of the models. Default "cpu". dtype: Their dtype. Default "float32".
    """

    output_dir: str
    model: str = "smollm2-135m-instruct"
    prompts_path: str | None = None
    num_prompts: int | None = None
    categories: list[str] | None = None
    prompt_seed: int = 0
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    judge: str = "keyword"
    judge_model: str | None = None
    judge_refusal_label: str | None = None
    judge_batch_size: int = 8
    reward_model: str | None = None
    reward_label_index: int = 0
    gold_refusals_path: str | None = None
    gold_prompts: str = "with_refusal"
    reuse_generations_from: str | None = None
    test_fraction: float = 0.15
    split_seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"


def _score_rewards(judged: list[dict], reward_fn: RewardFn, output_path: Path, name: str,
                   batch_size: int) -> list[dict]:
    def process_batch(batch: list[dict]) -> list[dict]:
        prompts = [r["prompt"] for r in batch for _ in r["responses"]]
        rewards = iter(reward_fn(prompts, [text for r in batch for text in r["responses"]]))
        return [{"prompt_index": r["prompt_index"], "rewards": [next(rewards) for _ in r["responses"]]} for r in batch]

    return process_resumably(judged, key="prompt_index", output_path=output_path, process_batch=process_batch,
                             batch_size=batch_size, settings={"reward_model": name}, desc="reward model")


def _copy_generations(source_dir: Path, output_dir: Path) -> None:
    """Copy generations.jsonl and its settings file from `source_dir` unless `output_dir` already has them."""
    names = ("generations.jsonl", settings_path_for(Path("generations.jsonl")).name)
    missing = [name for name in names if not (source_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"reuse_generations_from {source_dir}: missing {missing}; expected the output "
                                "directory of an earlier sorrybench_create_preferences_dataset.py run")
    if not (output_dir / names[0]).exists():
        for name in names:
            shutil.copyfile(source_dir / name, output_dir / name)


def _write_jsonl(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def create_preferences_dataset(options: DatasetOptions, *, judge: Judge | None = None,
                               reward_fn: RewardFn | None = None, model_and_tokenizer: tuple | None = None) -> dict:
    """Run all steps (see the module docstring) and return the dataset_info dict.

    Args:
        options: What to do.
        judge: Use this judge instead of building `options.judge` (tests inject a fake one).
        reward_fn: Use this `(prompts, responses) -> rewards` instead of loading `options.reward_model`.
        model_and_tokenizer: Use this (model, tokenizer) instead of loading `options.model`.
    """
    output_dir = Path(options.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    prompts = load_sorrybench_prompts(options.prompts_path, num_prompts=options.num_prompts,
                                      categories=options.categories, seed=options.prompt_seed)
    gold = load_gold_refusals(options.gold_refusals_path, prompts) if options.gold_refusals_path else None
    if options.reuse_generations_from:
        _copy_generations(Path(options.reuse_generations_from), output_dir)

    generations_path = output_dir / "generations.jsonl"
    if model_and_tokenizer is None and count_missing(prompts, key="prompt_index", output_path=generations_path):
        from common.models import load_model_and_tokenizer

        model_and_tokenizer = load_model_and_tokenizer(options.model, dtype=options.dtype, device=options.device)
    model, tokenizer = model_and_tokenizer or (None, None)  # None: every prompt is done, nothing to generate
    generations = generate_for_prompts(model, tokenizer, prompts, generations_path, options.generation,
                                       model_name=options.model)
    del model, model_and_tokenizer  # free the policy before loading a judge / reward model

    judge = judge or build_judge(options.judge, judge_model=options.judge_model, device=options.device,
                                 dtype=options.dtype, batch_size=options.judge_batch_size,
                                 refusal_label=options.judge_refusal_label)
    judged = judge_generations(generations, judge, output_dir / "judgments.jsonl",
                               batch_size=options.judge_batch_size)

    reward_name = options.reward_model or ("injected" if reward_fn else None)
    rewards_by_prompt: dict[int, list[float]] = {}
    if reward_fn is None and options.reward_model:
        reward_fn = RewardModelScorer.from_pretrained(options.reward_model, device=options.device, dtype=options.dtype,
                                                      label_index=options.reward_label_index,
                                                      batch_size=options.judge_batch_size)
    if reward_fn is not None:
        scored = _score_rewards(judged, reward_fn, output_dir / "rewards.jsonl", reward_name, options.judge_batch_size)
        rewards_by_prompt = {r["prompt_index"]: r["rewards"] for r in scored}

    pairs, skipped = [], Counter()
    for record in judged:
        gold_refusal = None
        if gold is not None:
            gold_refusal = gold.get(record["prompt_index"])
            if gold_refusal is None:
                skipped["no gold refusal for this prompt"] += 1
                continue
        pair = build_pair(record, rewards=rewards_by_prompt.get(record["prompt_index"]), gold_refusal=gold_refusal,
                          gold_prompts=options.gold_prompts)
        if isinstance(pair, str):
            skipped[pair] += 1
        else:
            pairs.append(pair)
    train, test = split_train_test(pairs, test_fraction=options.test_fraction, seed=options.split_seed)
    _write_jsonl(output_dir / "train.jsonl", train)
    _write_jsonl(output_dir / "test.jsonl", test)

    rates = compute_refusal_rates(judged)
    pair_types = Counter(pair["pair_type"] for pair in pairs)
    info = {
        "model": options.model, "judge": judge.name, "reward_model": reward_name,
        "gold_refusals_path": options.gold_refusals_path,
        "mode": f"gold ({options.gold_prompts})" if gold is not None else "model_refusals",
        "num_prompts": len(prompts), "num_pairs": len(pairs), "num_train": len(train), "num_test": len(test),
        "num_refusal_compliance_pairs": pair_types["refusal-compliance"],
        "num_refusal_refusal_pairs": pair_types["refusal-refusal"],
        "pair_type_counts": dict(sorted(pair_types.items())),
        "tie_break_counts": dict(sorted(Counter(pair["tie_break"] for pair in pairs).items())),
        "skipped_prompts": dict(sorted(skipped.items())),
        "initial_refusal_rate": rates["overall"]["refusal_rate"],
        "initial_refusal_counts": rates["overall"],
        "initial_refusal_rate_per_category": rates["per_category"],
        "options": {**asdict(options), "generation": asdict(options.generation)},
    }
    atomic_write_json(output_dir / "dataset_info.json", info)
    return info
