"""SORRY-Bench unintentional-unalignment runs (Razin et al. 2025, Sec. 6): DPO/IPO on (refusal, other response)
pairs, then the refusal rate of the trained model on the train and test prompts.

    python sorrybench_experiment_plan_runner.py --plan_config_path sorrybench/experiments_plans/smollm2_cpu.json

Variants are plain config choices: plain DPO/IPO; +SFT (`sft_coeff` > 0); gold preferences
(`use_gold_preferences`: train on each pair's `gold_refusal` / `gold_non_refusal`, as the reference's
--use_gold_preferences); CHES-filtered (`similarity_results_path` + `pref_similarity_measure`
"ln_ches_scores" + `preference_num_samples`: the k pairs with the lowest length-normalised CHES).
Outputs per run, besides the trainer's (`eval_metrics.jsonl`, `displacement_*.safetensors`, ...):
`refusal_eval/{generations,judgments}.jsonl`, `refusal_eval/refusal_rates.json` (and `refusal_eval_initial/`
with `refusal_eval_before_training`), and in summary.json `refusal_rate/{train,test,train_subset,overall}` with
`refusal_counts/...` next to `eval_metrics/<split>/preferred_logprobs_change_mean`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from common.config import ExperimentFamily, RunContext
from common.distributed import is_main_process
from common.io_utils import atomic_write_json, read_jsonl
from common.models import load_model_and_tokenizer
from common.names import DTYPE_NAMES
from common.optim import low_precision_training_problem
from common.preference_data import PreferenceExample, load_preference_examples
from preference_training.config import PreferenceTrainingConfig
from preference_training.selection import select_examples
from preference_training.trainer import train_preference_model
from sorrybench.generation import GenerationSettings
from sorrybench.judge_factory import build_judge
from sorrybench.judges import JUDGE_NAMES, LABELS
from sorrybench.refusal_rate import compute_refusal_rates, evaluate_refusal_rate, load_split_prompts


@dataclass(kw_only=True)
class SorryBenchConfig(PreferenceTrainingConfig):
    """Dataset-level preference training on SORRY-Bench pairs plus refusal-rate evaluation.

    All `PreferenceTrainingConfig` fields apply (model, loss, optimizer, similarity filtering, ...); the defaults
    that differ: `dataset_format` "sorrybench_prefs", `dataset`/`eval_dataset` the train/test files of the
    default CPU data set `data_files/sorrybench/smollm2-135m-instruct` (their prompts are the train/test splits of
    the refusal evaluation; `eval_dataset` is required), `lr` 5e-6 (the paper's SORRY-Bench value).

    Parameters of the training data and precision:
        use_gold_preferences (`bool`, defaults to `False`): Train (and evaluate log-probs) on the pairs'
            `gold_refusal` (preferred) and `gold_non_refusal` (dispreferred) instead of `chosen` / `rejected`.
        train_pair_types (`list[str]` or `None`, defaults to `None`): Train only on pairs whose `pair_type`
            (chosen label - rejected label, e.g. `"refusal-refusal"`, from sorrybench_create_preferences_dataset.py)
            is listed: the `num_train_samples` draw and the similarity selection are taken among them; `None`
            keeps all. Isolates the pairs where both responses refuse, the ones displacement can turn into
            compliance.
        allow_low_precision_training (`bool`, defaults to `False`): Accept training bfloat16/float16 weights with a
            plain optimizer (refused otherwise: most small updates round to zero; `common.optim`).

    Parameters of the held-out log-prob evaluation:
        eval_all_test_pairs (`bool`, defaults to `True`): Evaluate log-prob changes on every pair of
            `eval_dataset` (test.jsonl); `num_eval_samples` is then ignored. `False`: the trainer's seeded draw of
            `num_eval_samples` pairs.

    Parameters of the refusal-rate evaluation (after training; on every prompt of `dataset` and `eval_dataset`):
        refusal_eval (`bool`, defaults to `True`): Measure refusal rates after training.
        refusal_eval_before_training (`bool`, defaults to `False`): Also measure the initial model (written to
            `refusal_eval_initial/`, summary keys `refusal_rate_initial/...`).
        refusal_judge (`str`, defaults to `"keyword"`): `keyword`, `hf_classifier` or `hf_judge`.
        refusal_judge_model (`str` or `None`, defaults to `None`): Model of the hf judges (hf_judge: the official
            SORRY-Bench judge when None).
        refusal_judge_refusal_label (`str` or `None`, defaults to `None`): hf_classifier: label meaning refusal.
        refusal_judge_batch_size (`int`, defaults to `8`): Responses per judge forward pass.
        refusal_judge_dtype (`str`, defaults to `"float32"`): dtype of an hf judge (`bfloat16` for the 7B judge).
        refusal_num_responses (`int`, defaults to `1`): Responses per prompt.
        refusal_temperature (`float`, defaults to `0.7`): Sampling temperature (the reference's); 0 = greedy.
        refusal_max_new_tokens (`int`, defaults to `512`): Max tokens per response (the reference's).
        refusal_generation_batch_size (`int`, defaults to `8`): Prompts per `generate` call.
    The refusal rate is 1 - the mean judge score of the scored responses (`sorrybench.refusal_rate`).
    """

    dataset: str = "data_files/sorrybench/smollm2-135m-instruct/train.jsonl"
    dataset_format: str = "sorrybench_prefs"
    eval_dataset: str | None = "data_files/sorrybench/smollm2-135m-instruct/test.jsonl"
    lr: float = 5e-6
    use_gold_preferences: bool = False
    train_pair_types: list[str] | None = None
    allow_low_precision_training: bool = False
    eval_all_test_pairs: bool = True
    refusal_eval: bool = True
    refusal_eval_before_training: bool = False
    refusal_judge: str = "keyword"
    refusal_judge_model: str | None = None
    refusal_judge_refusal_label: str | None = None
    refusal_judge_batch_size: int = 8
    refusal_judge_dtype: str = "float32"
    refusal_num_responses: int = 1
    refusal_temperature: float = 0.7
    refusal_max_new_tokens: int = 512
    refusal_generation_batch_size: int = 8

    @classmethod
    def input_file_hint(cls, field_name: str, value: str) -> str:
        if field_name in ("dataset", "eval_dataset"):
            return ("make the data set with `python sorrybench_create_preferences_dataset.py --model MODEL` (it writes "
                    "train.jsonl and test.jsonl; see docs/sorrybench.md)")
        return super().input_file_hint(field_name, value)

    def validate(self) -> list[str]:
        problems = super().validate()
        if self.dataset_format != "sorrybench_prefs":
            problems.append(f"dataset_format must be 'sorrybench_prefs' for SORRY-Bench runs, "
                            f"got {self.dataset_format!r}")
        if not self.eval_dataset:
            problems.append("eval_dataset is empty; set it to the data set's test.jsonl (its prompts are the test "
                            "split of the refusal evaluation)")
        known = {f"{chosen}-{rejected}" for chosen in LABELS for rejected in LABELS}
        unknown_types = sorted(set(self.train_pair_types or ()) - known)
        if unknown_types or self.train_pair_types == []:
            problems.append(f"train_pair_types: {unknown_types or 'an empty list'} is not a list of pair types "
                            f"'<chosen label>-<rejected label>' with labels {LABELS}, e.g. ['refusal-refusal']; "
                            "use null to keep every pair")
        if not self.allow_low_precision_training:
            problem = low_precision_training_problem(self.dtype, self.optimizer, self.lr)
            if problem:
                problems.append(problem)
        if self.refusal_judge not in JUDGE_NAMES:
            problems.append(f"refusal_judge must be one of {JUDGE_NAMES}, got {self.refusal_judge!r}")
        try:
            self.refusal_generation_settings()
        except ValueError as error:
            problems.append(f"refusal_* fields: {error}")
        if self.refusal_judge_dtype not in DTYPE_NAMES:
            problems.append(f"refusal_judge_dtype must be one of {DTYPE_NAMES}, got {self.refusal_judge_dtype!r}")
        if self.refusal_judge_batch_size < 1:
            problems.append(f"refusal_judge_batch_size must be >= 1, got {self.refusal_judge_batch_size}")
        return problems

    def refusal_generation_settings(self) -> GenerationSettings:
        return GenerationSettings(num_responses=self.refusal_num_responses, temperature=self.refusal_temperature,
                                  max_new_tokens=self.refusal_max_new_tokens,
                                  batch_size=self.refusal_generation_batch_size, seed=0)


def with_gold_preferences(examples: list[PreferenceExample], source: str) -> list[PreferenceExample]:
    """The examples with chosen = `gold_refusal`, rejected = `gold_non_refusal` (the reference's
    --use_gold_preferences). Raises ValueError naming the file when a row lacks them."""
    replaced = []
    for example in examples:
        gold = example.metadata.get("gold_refusal"), example.metadata.get("gold_non_refusal")
        if not all(isinstance(text, str) and text for text in gold):
            raise ValueError(f"{source}, row {example.source_index}: use_gold_preferences needs `gold_refusal` and "
                             "`gold_non_refusal`; create the data set with --gold_preferences human or generic")
        replaced.append(dataclasses.replace(example, chosen=gold[0], rejected=gold[1]))
    return replaced


def _refusal_summary(rates: dict, suffix: str = "") -> dict:
    """Summary keys `refusal_rate<suffix>/<name>` (fraction) and `refusal_counts<suffix>/<name>` ([refusals,
    responses]) for name in overall, train, test, train_subset (the prompts actually trained on)."""
    entries = {"overall": rates["overall"], **rates["per_split"]}
    if "train_subset" in rates:
        entries["train_subset"] = rates["train_subset"]
    summary = {}
    for name, entry in entries.items():
        summary[f"refusal_rate{suffix}/{name}"] = entry["refusal_rate"]
        summary[f"refusal_counts{suffix}/{name}"] = [entry["num_refusals"], entry["num_responses"]]
    return summary


def measure_refusal_rates(model, tokenizer, config: SorryBenchConfig, device, output_dir: Path,
                          train_rows: list[int]) -> dict:
    """Refusal rates on all train/test prompts, plus on the training subset (`train_rows` of train.jsonl).

    The judge is loaded here and freed afterwards, so a large hf judge never shares the GPU with training.
    Adds `seconds` (generation + judging wall time) to the returned rates.
    """
    started = time.time()
    judge = build_judge(config.refusal_judge, judge_model=config.refusal_judge_model, device=device,
                        dtype=config.refusal_judge_dtype, batch_size=config.refusal_judge_batch_size,
                        refusal_label=config.refusal_judge_refusal_label)
    prompts = load_split_prompts({"train": config.dataset, "test": config.eval_dataset})
    rates = evaluate_refusal_rate(model, tokenizer, prompts, judge, output_dir, config.refusal_generation_settings(),
                                  model_name=config.model, judge_batch_size=config.refusal_judge_batch_size)
    del judge
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    subset_ids = {f"train/{row}" for row in train_rows}
    judged = [r for r in read_jsonl(output_dir / "judgments.jsonl") if r["example_id"] in subset_ids]
    if judged:
        rates["train_subset"] = compute_refusal_rates(judged)["overall"]
    rates["seconds"] = time.time() - started
    atomic_write_json(output_dir / "refusal_rates.json", rates)
    return rates


def run_sorrybench_experiment(config: SorryBenchConfig, ctx: RunContext) -> dict:
    """Select the training pairs (all, or CHES-filtered), train, then measure refusal rates; return the summary."""
    types = config.train_pair_types

    def of_listed_type(example: PreferenceExample) -> bool:
        return example.metadata.get("pair_type") in types

    selected = select_examples(dataclasses.replace(config, num_eval_samples=0) if config.eval_all_test_pairs
                               else config, keep=None if types is None else of_listed_type,
                               keep_what=f"of a pair_type in train_pair_types {types} (see the data set's "
                                         "dataset_info.json pair_type_counts)")
    eval_examples = (load_preference_examples(config.eval_dataset, config.dataset_format)
                     if config.eval_all_test_pairs else selected.eval)
    train_examples = selected.train
    if config.use_gold_preferences:
        train_examples = with_gold_preferences(train_examples, config.dataset)
        eval_examples = with_gold_preferences(eval_examples, config.eval_dataset or config.dataset)
    train_rows = [example.source_index for example in train_examples]
    summary: dict = {**selected.info}
    # rank 0 alone generates and judges (DDP keeps a full model replica on every rank)
    if config.refusal_eval_before_training and is_main_process():
        model, tokenizer = load_model_and_tokenizer(config.model, checkpoint=config.checkpoint,
                                                    is_lora_checkpoint=config.is_lora_checkpoint, dtype=config.dtype,
                                                    device=ctx.device)
        initial = measure_refusal_rates(model, tokenizer, config, ctx.device, ctx.run_dir / "refusal_eval_initial",
                                        train_rows)
        summary.update(_refusal_summary(initial, suffix="_initial"))
        del model, tokenizer
    result = train_preference_model(config, train_examples, eval_examples, ctx)
    summary.update(result.summary)
    if config.refusal_eval and is_main_process():
        rates = measure_refusal_rates(result.model, result.tokenizer, config, ctx.device, ctx.run_dir / "refusal_eval",
                                      train_rows)
        refusal = _refusal_summary(rates)
        summary.update(refusal)
        ctx.timings["refusal_eval_seconds"] = rates["seconds"]
        ctx.logger.log(result.summary.get("num_steps", 0),
                       **{k: v for k, v in refusal.items() if k.startswith("refusal_rate/") and v is not None})
    return summary


FAMILY = ExperimentFamily(name="sorrybench", config_cls=SorryBenchConfig, run=run_sorrybench_experiment)
