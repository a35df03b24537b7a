"""Config of the dataset-level preference trainer (similarity-quantile and SORRY-Bench runs).

One dataclass, documented field by field; plans list only what differs from the defaults. The loss fields
(`objective`, `kl_coeff`, `sft_coeff`, per-loss hyper-parameters) come from `common.losses.LossConfig`, the run
fields (`experiment_name`, `outputs_dir`, `random_seed`, `device`, ...) from `common.config.RunConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.losses import LossConfig
from common.optim import OPTIMIZERS
from common.preference_data import DATASET_FORMATS

SIMILARITY_MEASURES = ("ches_scores", "ln_ches_scores", "minus_normalized_edit_distances",
                       "last_hidden_embedding_inner_prods")
DTYPES = ("float32", "bfloat16", "float16")


# How to make each input file of these configs when it is missing (shown by plan validation).
INPUT_FILE_HINTS = {
    "similarity_results_path": "make it with `python compute_preference_similarity_per_example.py --model MODEL "
                               "--dataset DATASET --dataset_format FORMAT` (same model, dataset and max_input_length "
                               "as this run; see docs/dataset_level.md)",
    "load_model_checkpoint": "give a directory written by a run with save_model true, or chain that run with "
                             "\"{run:NAME}/model\"",
}


@dataclass(kw_only=True)
class PreferenceTrainingConfig(LossConfig):
    """Dataset-level DPO/IPO/... training on a (possibly similarity-filtered) subset of a preference data set.

    Parameters that control the model:
        model (`str`, defaults to `"smollm2-135m-instruct"`): Built-in name (`smollm2-135m-instruct`,
            `tiny-gpt2`, `tiny-llama`), Hub id or local directory (see `common/models.py`).
        load_model_checkpoint (`str` or `None`, defaults to `None`): Start from this checkpoint directory
            instead (e.g. `"{run:sft_run}/model"`); `""` is the same as `None`.
        is_lora_checkpoint (`bool`, defaults to `False`): The checkpoint holds LoRA adapters for `model`.
        use_lora (`bool`, defaults to `False`): Train LoRA adapters (rank `lora_rank`) instead of all weights.
            The reference model is the initial model (adapters start at zero, so it equals the base model).
        lora_rank (`int`, defaults to `8`): LoRA rank r >= 1.
        dtype (`str`, defaults to `"float32"`): Parameter dtype, one of `float32`, `bfloat16`, `float16`.
            Log-probs and losses are always accumulated in float32.

    Parameters that control the data:
        dataset (`str`, defaults to the UltraFeedback sample `data_files/ultrafeedback/train_1000.jsonl`):
            Hub id (`org/name`, `org/name/data_dir`, `org/name:config`) or local json/jsonl/jsonl.gz/csv file, found
            by the data-location rule (as given, data_files/, $LD_DATA_DIR; `common/data_locations.py`).
        dataset_format (`str`, defaults to `"ultrafeedback"`): `prompt_chosen_rejected`, `ultrafeedback`,
            `hh_rlhf` or `sorrybench_prefs`.
        dataset_split (`str`, defaults to `"train"`): Hub split (UltraFeedback binarized: `train_prefs`);
            ignored for local files.
        max_input_length (`int` or `None`, defaults to `512`): Truncate prompt + response to this many tokens
            (rule in `tokenize_pair`); must match the value the similarity file was computed with.
        data_seed (`int`, defaults to `0`): Seed of every data draw (the pool without a similarity file, the
            held-out split). Separate from `random_seed`, so seeds change only the training order.
        num_train_samples (`int` or `None`, defaults to `None`): Without a similarity file: draw this many rows
            of `dataset` (seeded by `data_seed`) as the training pool; `None` = all rows. With a similarity file
            the pool is the file's samples, and a value here must equal their count (a consistency check).
        eval_dataset (`str` or `None`, defaults to `None`): Held-out split (same format). `None` = rows of
            `dataset` outside the training pool (and outside the similarity file's samples).
        eval_dataset_split (`str`, defaults to `"test"`): Hub split of `eval_dataset` (`test_prefs` for
            UltraFeedback binarized).
        num_eval_samples (`int`, defaults to `64`): Held-out pairs drawn with `data_seed`; 0 = evaluate on the
            training subset only.

    Parameters that select the training subset (Razin et al. 2025, Sec. 5):
        similarity_results_path (`str` or `None`, defaults to `None`): File written by
            `compute_preference_similarity_per_example.py` (scores per source row of `dataset`). `None` = train
            on the pool without filtering.
        pref_similarity_measure (`str`, defaults to `"ches_scores"`): Score to filter on: `ches_scores`,
            `ln_ches_scores` (length-normalised CHES), `minus_normalized_edit_distances`,
            `last_hidden_embedding_inner_prods`.
        quantile (`float` or `None`, defaults to `None`): Keep the `preference_num_samples` pairs whose score
            ranks around this quantile (a window of k consecutive pairs in score order; 0 = the k lowest,
            1 = the k highest). `None` = the k lowest (the SORRY-Bench filter). Examples whose score is NaN
            (skipped by the similarity script) are never selected.
        preference_num_samples (`int` or `None`, defaults to `None`): k, the subset size; `None` = the whole pool
            (no filtering; `quantile` must then be `None`).

    Parameters that control the training:
        optimizer (`str`, defaults to `"rmsprop"`): `rmsprop` (the paper's), `adam` or `sgd`, torch defaults.
        lr (`float`, defaults to `1e-7`): Learning rate (the paper's value for OLMo/Gemma/Llama).
        batch_size (`int`, defaults to `32`): Pairs per optimizer step, over all processes. The loss of a step
            is the mean per-pair loss over the batch; a final partial batch is kept (under W processes it is
            dropped if it has fewer than W pairs).
        gradient_accumulation (`int`, defaults to `1`): Micro-batches per step (must divide `batch_size`); only
            changes memory with `padding_free=False` (the padding-free path already handles one pair at a time).
            The update is the same for every value.
        epochs (`int`, defaults to `1`): Passes over the training subset, reshuffled each epoch with `random_seed`.
        padding_free (`bool`, defaults to `True`): Forward and backward one pair at a time without padding (fastest
            and smallest on CPU). `False`: right-padded micro-batches (better GPU utilisation).
        share_prompt (`bool`, defaults to `True`): In the padding-free path, run each pair as one packed forward
            (prompt once, both responses attending to it through a block mask).

    Parameters that control evaluation and outputs:
        eval_every (`int` or `None`, defaults to `1`): Also evaluate after every `eval_every` epochs; evaluation
            always happens before training and after the last epoch. `None` = before/after only.
        save_model (`bool`, defaults to `False`): Save the trained model (or adapters) and tokenizer to
            `<run dir>/model` (load it with `load_model_checkpoint`).
        reference_cache_dir (`str` or `None`, defaults to `None`): Where reference log-probs are cached;
            `None` = `<outputs_dir>/.reference_cache`, `""` = no cache (recompute every run).
    """

    # model
    model: str = "smollm2-135m-instruct"
    load_model_checkpoint: str | None = None
    is_lora_checkpoint: bool = False
    use_lora: bool = False
    lora_rank: int = 8
    dtype: str = "float32"
    # data
    dataset: str = "data_files/ultrafeedback/train_1000.jsonl"
    dataset_format: str = "ultrafeedback"
    dataset_split: str = "train"
    max_input_length: int | None = 512
    data_seed: int = 0
    num_train_samples: int | None = None
    eval_dataset: str | None = None
    eval_dataset_split: str = "test"
    num_eval_samples: int = 64
    # subset selection
    similarity_results_path: str | None = None
    pref_similarity_measure: str = "ches_scores"
    quantile: float | None = None
    preference_num_samples: int | None = None
    # training
    optimizer: str = "rmsprop"
    lr: float = 1e-7
    batch_size: int = 32
    gradient_accumulation: int = 1
    epochs: int = 1
    padding_free: bool = True
    share_prompt: bool = True
    # evaluation and outputs
    eval_every: int | None = 1
    save_model: bool = False
    reference_cache_dir: str | None = None

    @classmethod
    def input_file_fields(cls) -> tuple[str, ...]:
        return ("dataset", "eval_dataset", "similarity_results_path", "load_model_checkpoint")

    def validate(self) -> list[str]:
        """Loss/run checks plus the cross-field rules of this trainer (each message names the field)."""
        problems = super().validate()
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.lora_rank < 1:
            problems.append(f"lora_rank must be >= 1, got {self.lora_rank}")
        if self.is_lora_checkpoint and not self.load_model_checkpoint:
            problems.append("is_lora_checkpoint is true but load_model_checkpoint is empty; set the adapter directory")
        if self.dataset_format not in DATASET_FORMATS:
            problems.append(f"dataset_format must be one of {DATASET_FORMATS}, got {self.dataset_format!r}")
        if self.max_input_length is not None and self.max_input_length < 2:
            problems.append(f"max_input_length must be >= 2 or null, got {self.max_input_length}")
        if self.num_train_samples is not None and self.num_train_samples < 1:
            problems.append(f"num_train_samples must be >= 1 or null (all rows), got {self.num_train_samples}")
        if self.num_eval_samples < 0:
            problems.append(f"num_eval_samples must be >= 0 (0 = no held-out split), got {self.num_eval_samples}")
        problems += self._selection_problems()
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 1 or self.gradient_accumulation < 1:
            problems.append(f"batch_size and gradient_accumulation must be >= 1, got {self.batch_size} and "
                            f"{self.gradient_accumulation}")
        elif self.batch_size % self.gradient_accumulation:
            problems.append(f"batch_size ({self.batch_size}) must be divisible by gradient_accumulation "
                            f"({self.gradient_accumulation}); e.g. set gradient_accumulation to a divisor")
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if self.eval_every is not None and self.eval_every < 1:
            problems.append(f"eval_every must be >= 1 (epochs) or null (before/after only), got {self.eval_every}")
        return problems

    def _selection_problems(self) -> list[str]:
        problems = []
        if self.pref_similarity_measure not in SIMILARITY_MEASURES:
            problems.append(f"pref_similarity_measure must be one of {SIMILARITY_MEASURES}, "
                            f"got {self.pref_similarity_measure!r}")
        if self.quantile is not None and not 0.0 <= self.quantile <= 1.0:
            problems.append(f"quantile must be in [0, 1] or null (the lowest scores), got {self.quantile}")
        if self.preference_num_samples is not None and self.preference_num_samples < 1:
            problems.append(f"preference_num_samples must be >= 1 or null (whole pool), "
                            f"got {self.preference_num_samples}")
        if self.preference_num_samples is not None and not self.similarity_results_path:
            problems.append("preference_num_samples is set but similarity_results_path is empty; filtering needs "
                            "the file written by compute_preference_similarity_per_example.py "
                            "(or use num_train_samples for a random subset)")
        if self.quantile is not None and self.preference_num_samples is None:
            problems.append(f"quantile={self.quantile} needs preference_num_samples (the window size k)")
        return problems

    @classmethod
    def input_file_hint(cls, field_name: str, value: str) -> str:
        return INPUT_FILE_HINTS.get(field_name) or super().input_file_hint(field_name, value)

    @property
    def checkpoint(self) -> str | None:
        """`load_model_checkpoint` with "" normalised to None."""
        return self.load_model_checkpoint or None
