"""Config of the dataset-level preference trainer (similarity-quantile and SORRY-Bench runs).

One dataclass, documented field by field; plans list only what differs from the defaults. The loss fields
(`objective`, `kl_coeff`, `sft_coeff`, per-loss hyper-parameters) come from `common.losses.LossConfig`, the
gradient-entanglement fields from `common.grad_entanglement.GradEntanglementConfig`, the run
fields (`experiment_name`, `outputs_dir`, `random_seed`, `device`, ...) from `common.config.RunConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.grad_entanglement import GradEntanglementConfig
from common.losses import LossConfig
from common.names import SIMILARITY_MEASURE_NAMES
from common.optim import LR_SCHEDULERS
from common.preference_data import DATASET_FORMATS
from common.preference_tokenization import TRUNCATIONS
from common.training_field_checks import model_field_problems, normalize_off_values, optimizer_field_problems



# How to make each input file of these configs when it is missing (shown by plan validation).
INPUT_FILE_HINTS = {
    "similarity_results_path": "make it with `python compute_preference_similarity_per_example.py --model MODEL "
                               "--dataset DATASET --dataset_format FORMAT` (same model, dataset and max_input_length "
                               "as this run; see docs/dataset_level.md)",
    "load_model_checkpoint": "give a directory written by a run with save_model true, or chain that run with "
                             "\"{run:NAME}/model\"",
}


@dataclass(kw_only=True)
class PreferenceTrainingConfig(LossConfig, GradEntanglementConfig):
    """Dataset-level DPO/IPO/... training on a (possibly similarity-filtered) subset of a preference data set.

    Parameters that control the model:
        model (`str`, defaults to `"smollm2-135m-instruct"`): Built-in name (`smollm2-135m-instruct`,
            `tiny-gpt2`, `tiny-llama`), Hub id or local directory (see `common/models.py`).
        load_model_checkpoint (`str` or `None`, defaults to `None`): Start from this checkpoint directory
            instead (e.g. `"{run:sft_run}/model"`); `""` is the same as `None`.
        is_lora_checkpoint (`bool`, defaults to `False`): The checkpoint holds LoRA adapters for `model`.
        use_lora (`bool`, defaults to `False`): Train LoRA adapters (rank `lora_rank`) instead of all weights.
            The reference model is the initial model (adapters start at zero, so it equals the base model).
        lora_rank (`int`, defaults to `8`): LoRA rank r >= 1 (TRL/peft: `lora_r`).
        lora_alpha (`float` or `None`, defaults to `None`): LoRA scale numerator (the update is scaled by
            lora_alpha / r); `None` = 2 r, as before.
        lora_target_modules (`list[str]` or `None`, defaults to `None`): Module names (or suffixes) peft wraps;
            `None` = the attention projections (see `common/models.py`).
        lora_dropout (`float`, defaults to `0.0`): Dropout on the LoRA input, recorded in the adapter config. It
            is inactive while training here, since all dropout is off (as under TRL's default `disable_dropout`).
        ref_model (`str` or `None`, defaults to `None`): TRL's `ref_model`: a separate reference model (built-in
            name, Hub id or local directory with the same tokenizer) whose log-probs the losses compare against.
            `None` = the initial policy (the model after `load_model_checkpoint`), as the reference does. With one,
            `eval_metrics/*_logprobs_change_*` are relative to it and `displacement/*` to the initial policy.
        gradient_checkpointing (`bool`, defaults to `False`): Recompute activations in the backward pass (less
            memory, about one more forward of time); dropout stays off, log-probs are unchanged.
        torch_compile (`bool`, defaults to `False`): TRL's `torch_compile`, applied to the decoder's elementwise
            blocks only (RMSNorm, SwiGLU, rotary embedding; `common/compiled_blocks.py`): about 0.9x the CPU step
            time of SmolLM2 after about 15 s of compilation at the start; falls back to eager with a warning
            where compiling fails. Same numbers up to fp32 round-off.
        dtype (`str`, defaults to `"float32"`): Parameter dtype, one of `float32`, `bfloat16`, `float16`.
            Log-probs and losses are always accumulated in float32.
        bf16 (`bool`, defaults to `False`): TRL's mixed precision: forward passes under CUDA autocast in
            bfloat16 with float32 master weights (`dtype` must be `float32`). CUDA only (a CPU run fails at start
            with a clear message).
        fp16 (`bool`, defaults to `False`): As `bf16` in float16, with loss scaling (`torch.amp.GradScaler`).

    Parameters that control the data:
        dataset (`str`, defaults to `"data_files/ultrafeedback/train_1000.jsonl"`): The UltraFeedback sample by
            default; a Hub id (`org/name`, `org/name/data_dir`, `org/name:config`) or local json/jsonl/jsonl.gz/csv
            file, found by the data-location rule (as given, data_files/, $LD_DATA_DIR; `common/data_locations.py`).
        dataset_format (`str`, defaults to `"ultrafeedback"`): `prompt_chosen_rejected`, `ultrafeedback`,
            `hh_rlhf` or `sorrybench_prefs`.
        dataset_split (`str`, defaults to `"train"`): Hub split (UltraFeedback binarized: `train_prefs`);
            ignored for local files.
        max_input_length (`int` or `None`, defaults to `512`): Truncate prompt + response to this many tokens
            (rule in `tokenize_pair`); must match the value the similarity file was computed with.
        truncation (`str`, defaults to `"paper"`): `paper` (the reference's: prompt + response cut on the right;
            a pair whose prompt is longer than `max_input_length`, or whose response is left empty, is dropped)
            or `keep_response` (ours: the prompt is cut from the left, no pair dropped for length).
        skip_identical_pairs (`bool`, defaults to `False`): Drop pairs with identical responses (the reference
            keeps them; their DPO gradient is zero).
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
        optimizer (`str`, defaults to `"rmsprop"`): TRL's `optim`: `rmsprop` (the paper's), `adam`, `adamw`
            (TRL's `adamw_torch`) or `sgd`, torch defaults otherwise. On CUDA torch's multi-tensor (foreach)
            implementations are used; on the CPU RMSprop is `ScratchRMSprop` (same update, measured faster).
        weight_decay (`float`, defaults to `0.0`): Weight decay of the optimizer (decoupled for `adamw`).
        lr (`float`, defaults to `1e-7`): Learning rate (the paper's value for OLMo/Gemma/Llama).
        lr_scheduler_type (`str`, defaults to `"constant"`): `constant`, `constant_with_warmup`, `linear` or
            `cosine` (transformers' schedules over all optimizer steps; formulas in `common.optim.build_lr_scheduler`).
        warmup_steps (`int`, defaults to `0`): Linear warm-up steps from lr 0; when > 0 it overrides
            `warmup_ratio`.
        warmup_ratio (`float`, defaults to `0.0`): Warm-up as a fraction of all steps (ceil(ratio x steps)).
        max_grad_norm (`float` or `None`, defaults to `None`): Clip the global gradient L2 norm to this value
            before each step and log `grad_norm` (TRL's default is 1.0); `None` = no clipping, as before.
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
        save_steps (`int`, defaults to `0`): Also save the model to `<run dir>/checkpoints/step_<N>` every this
            many optimizer steps; 0 = off.
        save_every_epochs (`int`, defaults to `0`): Also save it to `<run dir>/checkpoints/epoch_<E>` after every
            this many epochs; 0 = off.
        reference_cache_dir (`str` or `None`, defaults to `None`): Where reference log-probs are cached;
            `None` = `<outputs_dir>/.reference_cache`, `""` = no cache (recompute every run).
    """

    # model
    model: str = "smollm2-135m-instruct"
    load_model_checkpoint: str | None = None
    is_lora_checkpoint: bool = False
    use_lora: bool = False
    lora_rank: int = 8
    lora_alpha: float | None = None
    lora_target_modules: list[str] | None = None
    lora_dropout: float = 0.0
    ref_model: str | None = None
    gradient_checkpointing: bool = False
    torch_compile: bool = False
    dtype: str = "float32"
    bf16: bool = False
    fp16: bool = False
    # data
    dataset: str = "data_files/ultrafeedback/train_1000.jsonl"
    dataset_format: str = "ultrafeedback"
    dataset_split: str = "train"
    max_input_length: int | None = 512
    truncation: str = "paper"
    skip_identical_pairs: bool = False
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
    weight_decay: float = 0.0
    lr: float = 1e-7
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = None
    batch_size: int = 32
    gradient_accumulation: int = 1
    epochs: int = 1
    padding_free: bool = True
    share_prompt: bool = True
    # evaluation and outputs
    eval_every: int | None = 1
    save_model: bool = False
    save_steps: int = 0
    save_every_epochs: int = 0
    reference_cache_dir: str | None = None

    def __post_init__(self) -> None:
        normalize_off_values(self)  # num_train_samples -1 (reference plans) and load_model_checkpoint "" -> None

    @classmethod
    def input_file_fields(cls) -> tuple[str, ...]:
        return ("dataset", "eval_dataset", "similarity_results_path", "load_model_checkpoint")

    def validate(self) -> list[str]:
        """Loss/run checks plus the cross-field rules of this trainer (each message names the field)."""
        problems = super().validate()
        problems += model_field_problems(self)
        if self.dataset_format not in DATASET_FORMATS:
            problems.append(f"dataset_format must be one of {DATASET_FORMATS}, got {self.dataset_format!r}")
        if self.max_input_length is not None and self.max_input_length < 2:
            problems.append(f"max_input_length must be >= 2 or null, got {self.max_input_length}")
        if self.truncation not in TRUNCATIONS:
            problems.append(f"truncation must be one of {TRUNCATIONS}, got {self.truncation!r}")
        if self.num_train_samples is not None and self.num_train_samples < 1:
            problems.append(f"num_train_samples must be >= 1 or null (all rows; -1 is read as null), "
                            f"got {self.num_train_samples}")
        if self.num_eval_samples < 0:
            problems.append(f"num_eval_samples must be >= 0 (0 = no held-out split), got {self.num_eval_samples}")
        problems += self._selection_problems()
        problems += optimizer_field_problems(self)
        if self.batch_size < 1 or self.gradient_accumulation < 1:
            problems.append(f"batch_size and gradient_accumulation must be >= 1, got {self.batch_size} and "
                            f"{self.gradient_accumulation}")
        elif self.batch_size % self.gradient_accumulation:
            problems.append(f"batch_size ({self.batch_size}) must be divisible by gradient_accumulation "
                            f"({self.gradient_accumulation}); e.g. set gradient_accumulation to a divisor")
        problems += self._training_setting_problems()
        if self.eval_every is not None and self.eval_every < 1:
            problems.append(f"eval_every must be >= 1 (epochs) or null (before/after only), got {self.eval_every}")
        return problems

    def _training_setting_problems(self) -> list[str]:
        """The TRL-named settings: scheduler, warm-up, clipping, mixed precision, LoRA, checkpoints."""
        problems = []
        if self.lr_scheduler_type not in LR_SCHEDULERS:
            problems.append(f"lr_scheduler_type must be one of {LR_SCHEDULERS}, got {self.lr_scheduler_type!r}")
        if self.warmup_steps < 0 or not 0.0 <= self.warmup_ratio <= 1.0:
            problems.append(f"warmup_steps must be >= 0 and warmup_ratio in [0, 1], got {self.warmup_steps} and "
                            f"{self.warmup_ratio}")
        elif self.lr_scheduler_type == "constant" and (self.warmup_steps or self.warmup_ratio):
            problems.append("lr_scheduler_type 'constant' has no warm-up (as in transformers); use "
                            "'constant_with_warmup' or set warmup_steps and warmup_ratio to 0")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            problems.append(f"max_grad_norm must be > 0 or null (no clipping), got {self.max_grad_norm}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.bf16 and self.fp16:
            problems.append("bf16 and fp16 are both true; choose one")
        if (self.bf16 or self.fp16) and self.dtype != "float32":
            problems.append(f"bf16/fp16 autocast keeps float32 master weights: set dtype to float32 (got "
                            f"{self.dtype!r})")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            problems.append(f"lora_alpha must be > 0 or null (2 x lora_rank), got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            problems.append(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lora_target_modules is not None and not self.lora_target_modules:
            problems.append("lora_target_modules is an empty list; list module names or use null (attention)")
        if self.save_steps < 0 or self.save_every_epochs < 0:
            problems.append(f"save_steps and save_every_epochs must be >= 0 (0 = off), got {self.save_steps} and "
                            f"{self.save_every_epochs}")
        return problems

    def _selection_problems(self) -> list[str]:
        problems = []
        if self.pref_similarity_measure not in SIMILARITY_MEASURE_NAMES:
            problems.append(f"pref_similarity_measure must be one of {SIMILARITY_MEASURE_NAMES}, "
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
        """`load_model_checkpoint` (None = `model`'s own weights; a plan's "" is read as None at construction)."""
        return self.load_model_checkpoint
