"""Create the SORRY-Bench preference data set (the reference's `sorrybench_create_preferences_dataset.py`): sample
two responses per prompt, judge them, pair them (`sorrybench.pairs`), optionally re-label ties with PairRM or a
reward model, attach gold preferences (`sorrybench.gold`), split train/test.

Steps (all outputs in `output_dir`; the first two are resumable, so a rerun continues where it stopped):
    1. generations.jsonl   2 sampled responses per SORRY-Bench prompt (`sorrybench.generation`)
    2. judgments.jsonl     the judge's label / refusal score / raw verdict per response
    3. train.jsonl, test.jsonl   one pair per prompt (reference schema plus our labels), seeded split
    4. dataset_info.json   settings, counts (pair types, how pairs were decided, dropped prompts), initial refusal rate
One `random.Random(random_seed)` stream serves the tie draws and then the gold draws, as the reference's seeded
global `random`. An empty outcome raises `EmptyDatasetError` (no train/test files are written).
"""

from __future__ import annotations

import random
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.io_utils import atomic_write_json, write_jsonl
from sorrybench.generation import GenerationSettings, generate_for_prompts
from sorrybench.gold import (GENERIC_REFUSALS_FILE, GOLD_SOURCES, attach_generic_gold, attach_human_gold,
                             human_outputs_by_question, load_refusal_pool, resolve_gold_source)
from sorrybench.judge_factory import build_judge
from sorrybench.judges import JUDGE_NAMES, Judge
from sorrybench.pairs import (PairComparator, check_test_ratio, count_pairs_with_refusal_chosen, pair_two_responses,
                              relabel_random_pairs, split_train_test)
from sorrybench.prompts import load_sorrybench_prompts
from sorrybench.refusal_rate import compute_refusal_rates, judge_generations
from sorrybench.resumable import count_missing, settings_path_for


class EmptyDatasetError(ValueError):
    """The data set would be empty or useless; the message says why and what to do."""


@dataclass
class DatasetOptions:
    """Options of `create_preferences_dataset` (the command line of sorrybench_create_preferences_dataset.py).

    Attributes:
        output_dir: Directory of all outputs (created).
        model: Model whose responses are sampled (built-in name, Hub id or local dir). Default smollm2-135m-instruct.
        prompts_path: SORRY-Bench csv/jsonl or Hub id; None = the data-location rule's copy, else the Hub.
        num_prompts: Subsample this many prompts (seeded by `prompt_seed`); None = all 450.
        categories: Keep only these categories ("1".."45"); None = all.
        prompt_seed: Seed of the prompt subsample. Default 0.
        generation: Sampling settings; `num_responses` must be 2 (the reference pairs two responses).
        judge: keyword | hf_classifier | hf_judge. Default keyword.
        judge_model: Model of the hf judges (hf_judge default: the official SORRY-Bench judge).
        judge_refusal_label: hf_classifier: the label name/index meaning refusal.
        judge_batch_size: Responses per judge forward pass. Default 8.
        reward_model: Re-label the randomly assigned pairs with "pairrm" (PairRM, as the reference's --use_rm) or
            a Hub/local sequence-classification reward model; None = keep the random assignment.
        reward_label_index: Which logit of a sequence-classification reward model is the reward. Default 0.
        rm_batch_size: Pairs per reward-model forward pass. Default 4 (the reference).
        gold_preferences: auto | human | generic | none (`sorrybench.gold`). Default auto.
        human_judgments_path: Local file or Hub id of the human judgments; None = the conventional file, else the Hub.
        gold_refusals_path: Generic refusals pool (gold_preferences generic).
            Default data_files/sorrybench/gold_refusals.txt.
        reuse_generations_from: Directory of an earlier run whose generations.jsonl (+ settings) is copied into
            `output_dir` first (the settings must match, as for a resumed run). None = off.
        test_ratio: Share of pairs in test.jsonl, in [0, 1). Default 0.15.
        random_seed: Seed of the tie and gold draws and of the split (> 0; <= 0: unseeded). Default 128.
        cache_dir: Hugging Face cache directory of the human-judgment data set (models: see the script). None = default.
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
    rm_batch_size: int = 4
    gold_preferences: str = "auto"
    human_judgments_path: str | None = None
    gold_refusals_path: str = GENERIC_REFUSALS_FILE
    reuse_generations_from: str | None = None
    test_ratio: float = 0.15
    random_seed: int = 128
    cache_dir: str | None = None
    device: str = "cpu"
    dtype: str = "float32"

    def validate(self) -> list[str]:
        """Every problem of the options (empty = fine); checked before anything is loaded or generated."""
        problems = []
        try:
            check_test_ratio(self.test_ratio)
        except ValueError as error:
            problems.append(str(error))
        if self.generation.num_responses != 2:
            problems.append(f"num_responses must be 2 (the reference pairs two sampled responses per prompt), "
                            f"got {self.generation.num_responses}")
        if self.judge not in JUDGE_NAMES:
            problems.append(f"judge must be one of {JUDGE_NAMES}, got {self.judge!r}")
        if self.gold_preferences not in GOLD_SOURCES:
            problems.append(f"gold_preferences must be one of {GOLD_SOURCES}, got {self.gold_preferences!r}")
        for name in ("judge_batch_size", "rm_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        return problems


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



def _build_comparator(options: DatasetOptions) -> PairComparator:
    from sorrybench.reward_models import build_comparator

    return build_comparator(options.reward_model, device=options.device, dtype=options.dtype,
                            batch_size=options.rm_batch_size, label_index=options.reward_label_index,
                            cache_dir=options.cache_dir)


def _check_not_empty(pairs: list[dict], num_prompts: int, gold_source: str, info: dict) -> None:
    if not pairs:
        raise EmptyDatasetError(
            f"0 preference pairs from {num_prompts} prompts: the human judgments hold no refusal plus non-refusal "
            "for any of these prompts; use more prompts (--num_prompts, --categories) or --gold_preferences generic")
    if count_pairs_with_refusal_chosen(pairs) == 0 and gold_source == "none":
        raise EmptyDatasetError(
            f"none of the {len(pairs)} pairs prefers a refusal: the model never refused (initial refusal rate "
            f"{info['initial_refusal_rate']}); use --gold_preferences generic or human (and train with "
            "use_gold_preferences), or another model / more prompts")


def create_preferences_dataset(options: DatasetOptions, *, judge: Judge | None = None,
                               comparator: PairComparator | None = None,
                               model_and_tokenizer: tuple | None = None) -> dict:
    """Run all steps (see the module docstring) and return the dataset_info dict.

    Args:
        options: What to do (validated first: ValueError listing every problem).
        judge: Use this judge instead of building `options.judge` (tests inject a fake one).
        comparator: Re-label ties with this `PairComparator` instead of loading `options.reward_model`.
        model_and_tokenizer: Use this (model, tokenizer) instead of loading `options.model`.

    Raises:
        EmptyDatasetError: no pair, or no pair preferring a refusal and no gold preferences (dataset_info.json is
            written, train/test files are not).
    """
    problems = options.validate()
    if problems:
        raise ValueError("; ".join(problems))
    output_dir = Path(options.output_dir)
    prompts = load_sorrybench_prompts(options.prompts_path, num_prompts=options.num_prompts,
                                      categories=options.categories, seed=options.prompt_seed)
    gold_source, human_rows = resolve_gold_source(options.gold_preferences, options.human_judgments_path,
                                                  cache_dir=options.cache_dir)
    pool = load_refusal_pool(options.gold_refusals_path) if gold_source == "generic" else None
    human_outputs = human_outputs_by_question(human_rows) if human_rows is not None else None
    output_dir.mkdir(parents=True, exist_ok=True)
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

    rng = random.Random(options.random_seed) if options.random_seed > 0 else random.Random()
    pairs = [pair_two_responses(record, rng) for record in judged]
    num_random = sum(pair["decided_by"] == "random" for pair in pairs)
    if options.reward_model or comparator is not None:
        relabel_random_pairs(pairs, comparator or _build_comparator(options))
    if human_outputs is not None:
        pairs = attach_human_gold(pairs, human_outputs, rng)
    elif pool is not None:
        pairs = attach_generic_gold(pairs, pool)
    train, test = split_train_test(pairs, test_ratio=options.test_ratio, seed=options.random_seed)

    rates = compute_refusal_rates(judged)
    info = {
        "model": options.model, "judge": judge.name,
        "reward_model": options.reward_model or ("injected" if comparator is not None else None),
        "gold_preferences": gold_source, "num_prompts": len(prompts), "num_pairs": len(pairs),
        "num_train": len(train), "num_test": len(test),
        "num_dropped_without_human_gold": len(judged) - len(pairs),
        "num_pairs_decided_at_random": num_random,
        "num_pairs_refusal_chosen": count_pairs_with_refusal_chosen(pairs),
        "pair_type_counts": dict(sorted(Counter(pair["pair_type"] for pair in pairs).items())),
        "decided_by_counts": dict(sorted(Counter(pair["decided_by"] for pair in pairs).items())),
        "initial_refusal_rate": rates["overall"]["refusal_rate"],
        "initial_refusal_counts": rates["overall"],
        "initial_refusal_rate_per_category": rates["per_category"],
        "options": {**asdict(options), "generation": asdict(options.generation)},
    }
    atomic_write_json(output_dir / "dataset_info.json", info)
    try:
        _check_not_empty(pairs, len(prompts), gold_source, info)
    except EmptyDatasetError:
        for name in ("train.jsonl", "test.jsonl"):  # never leave an earlier run's pairs beside this run's info
            (output_dir / name).unlink(missing_ok=True)
        raise
    write_jsonl(output_dir / "train.jsonl", train)
    write_jsonl(output_dir / "test.jsonl", test)
    return info
