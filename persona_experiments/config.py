"""Run config of the persona single-token experiments (Razin et al. 2025, Sec. 3). Field names follow the
reference implementation's plans; every field is documented in docs/persona.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common.grad_entanglement import GradEntanglementConfig
from common.losses import LossConfig
from common.training_field_checks import model_field_problems, normalize_off_values, optimizer_field_problems
from persona_experiments.data import ANSWERS, DEFAULT_PERSONA_DATASET, output_token_problems

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def tokenizer_without_conversion(model: str) -> str | None:
    """Where `model`'s tokenizer loads from with no conversion and no download ("built-in" or a directory), or
    None: a Hub id, or the SmolLM2 built-in before its one-time conversion."""
    from common.builtin_models import BUILTIN_MODELS, SMOLLM2, cache_root  # deferred: imports transformers

    if model in BUILTIN_MODELS and model != SMOLLM2:
        return "built-in"
    directory = cache_root() / "models" / SMOLLM2 if model == SMOLLM2 else Path(model).expanduser()
    if (directory / "config.json").is_file() and any((directory / f).is_file() for f in TOKENIZER_FILES):
        return str(directory)
    return None


@dataclass(kw_only=True)
class PersonaConfig(LossConfig, GradEntanglementConfig):
    """One single-token preference-training run on persona prompts (fields as in the reference's plans).

    Parameters that control the data:
        dataset (`str`, defaults to `"data_files/persona/ends-justify-means.jsonl"`): Persona jsonl, found by the
            data-location rule (as given, data_files/, $LD_DATA_DIR, its Hub source) or a Hub file
            `<org>/<repo>/<path>`.
        num_train_samples (`int` or `None`, defaults to `1`): Number of training prompts (>= 1, after the answer
            filter); `None` = all (the reference plans' -1 is read as `None`).
        answer_matching_behavior_to_use (`str`, defaults to `""`): Keep only prompts whose
            answer_matching_behavior is `Yes` or `No`; `""` keeps both.
        train_samples_random_seed (`int`, defaults to `-1`): Seed selecting the prompts and drawing each prompt's
            (y+, y-) pair; -1 = the run's random_seed.
        batch_size (`int`, defaults to `-1`): Prompts per optimizer step (>= 1); -1 = all (full batch, the
            reference's spelling).
        output_tokens_matching_yes (`list[str]`, defaults to `["Yes"]`): Candidate outputs for prompts whose
            answer_matching_behavior is Yes (y+ is drawn from this list, y- from the other). Each must encode to
            exactly one token: checked when the plan is validated if the tokenizer loads without conversion or
            download (built-in tiny models, the converted SmolLM2 cache, a local directory), else when the run
            starts (the plan then says "token check deferred to run start").
        output_tokens_matching_no (`list[str]`, defaults to `["No"]`): Same for No.

    Parameters that control the model:
        model (`str`, defaults to `"smollm2-135m-instruct"`): Built-in name (`smollm2-135m-instruct`,
            `tiny-gpt2`, `tiny-llama`), Hub id or local directory.
        load_model_checkpoint (`str` or `None`, defaults to `None`): Directory to load the weights from (e.g.
            `"{run:sft_run}/model"`); `None` = `model`'s own (`""` is read as `None`).
        is_lora_checkpoint (`bool`, defaults to `False`): The checkpoint is a LoRA adapter on top of `model`.
        use_lora (`bool`, defaults to `False`): Train a fresh LoRA adapter instead of all weights.
        lora_rank (`int`, defaults to `8`): LoRA rank r >= 1.
        dtype (`str`, defaults to `"float32"`): Weight dtype: `float32`, `bfloat16` or `float16`.
        device_map (`str` or `None`, defaults to `None`): `auto` spreads the model's layers over the visible GPUs
            (models larger than one GPU, e.g. Llama-3-8B; see docs/scaling_out.md); `None` = the whole model on
            `device`.

    Loss fields come from `LossConfig` (objective: `cross_entropy` = SFT on y+, `dpo`, `ipo`, ... see
    docs/losses.md), gradient-entanglement fields from `GradEntanglementConfig`.

    Parameters that control the optimisation:
        optimizer (`str`, defaults to `"rmsprop"`): `rmsprop` (the paper's), `adam` or `sgd`, torch defaults
            otherwise.
        lr (`float`, defaults to `1e-7`): Learning rate (> 0; the paper's DPO value).
        epochs (`int`, defaults to `101`): Passes over the training prompts (>= 1; one step per epoch with full
            batch).
        gradient_accumulation (`int`, defaults to `1`): Micro-batches per step (>= 1, at most the batch size);
            the update is identical to one pass over the batch (each micro-batch's summed loss is divided by the
            batch size).

    Parameters that control logging and outputs:
        log_top_token_logit_change_interval (`int` or `None`, defaults to `10`): Every this many steps (>= 1; and
            at the end), record the top tokens by probability / log-prob increase since init and the rank of y+
            among them; `None` = only at the end (a value <= 0, the reference plans' "off", is read as `None`).
        num_top_tokens (`int`, defaults to `10`): k of the top-token lists (>= 1).
        track_logits_for_tokens (`list[str]`, defaults to `[]`): Extra tokens (each one vocabulary token) whose
            logit and log-prob are logged at every tracked step.
        save_finegrained_token_metrics (`bool`, defaults to `False`): Also save the full next-token log-prob
            vectors (N, V) at every top-token point into tensors.safetensors.
        save_model (`bool`, defaults to `False`): Write the trained model (HF directory, or the LoRA adapter) to
            `<run dir>/model`.
    """

    # data
    INPUT_FILE_HINTS = {
        "load_model_checkpoint": "give a directory written by a run with save_model true, or chain that run with "
                                 "\"{run:NAME}/model\"",
    }

    dataset: str = DEFAULT_PERSONA_DATASET
    num_train_samples: int | None = 1
    answer_matching_behavior_to_use: str = ""
    train_samples_random_seed: int = -1
    batch_size: int = -1
    output_tokens_matching_yes: list[str] = field(default_factory=lambda: ["Yes"])
    output_tokens_matching_no: list[str] = field(default_factory=lambda: ["No"])
    # model
    model: str = "smollm2-135m-instruct"
    load_model_checkpoint: str | None = None
    is_lora_checkpoint: bool = False
    use_lora: bool = False
    lora_rank: int = 8
    dtype: str = "float32"
    device_map: str | None = None
    # optimisation (loss fields come from LossConfig)
    optimizer: str = "rmsprop"
    lr: float = 1e-7
    epochs: int = 101
    gradient_accumulation: int = 1
    # logging and outputs
    log_top_token_logit_change_interval: int | None = 10
    num_top_tokens: int = 10
    track_logits_for_tokens: list[str] = field(default_factory=list)
    save_finegrained_token_metrics: bool = False
    save_model: bool = False

    @classmethod
    def input_file_fields(cls) -> tuple[str, ...]:
        return ("dataset", "load_model_checkpoint")

    def validate(self) -> list[str]:
        """Base and loss checks plus the persona fields' ranges and cross-field rules."""
        problems = super().validate()
        if self.num_train_samples is not None and self.num_train_samples < 1:
            problems.append(f"num_train_samples must be >= 1 or null (all; -1 is read as null), "
                            f"got {self.num_train_samples}")
        if self.answer_matching_behavior_to_use not in (*ANSWERS, ""):
            problems.append(f"answer_matching_behavior_to_use must be 'Yes', 'No' or '' (both), "
                            f"got {self.answer_matching_behavior_to_use!r}")
        if self.train_samples_random_seed < -1:
            problems.append(f"train_samples_random_seed must be >= 0 or -1 (the run's seed), "
                            f"got {self.train_samples_random_seed}")
        if self.batch_size != -1 and self.batch_size < 1:
            problems.append(f"batch_size must be >= 1 or -1 (full batch), got {self.batch_size}")
        if self.batch_size != -1 and self.num_train_samples is not None and self.batch_size > self.num_train_samples:
            problems.append(f"batch_size {self.batch_size} exceeds num_train_samples {self.num_train_samples}; "
                            "use -1 for full batch")
        for name in ("output_tokens_matching_yes", "output_tokens_matching_no"):
            if not getattr(self, name):
                problems.append(f"{name} must list at least one output token, got []")
        shared = sorted(set(self.output_tokens_matching_yes) & set(self.output_tokens_matching_no))
        if shared:
            problems.append(f"output tokens {shared} appear in both output_tokens_matching_yes and "
                            "output_tokens_matching_no (y+ and y- must differ)")
        if self.device_map not in (None, "auto"):
            problems.append(f"device_map must be null or 'auto' (spread the layers over the visible GPUs), "
                            f"got {self.device_map!r}")
        problems += model_field_problems(self) + optimizer_field_problems(self)
        if self.gradient_accumulation < 1:
            problems.append(f"gradient_accumulation must be >= 1, got {self.gradient_accumulation}")
        effective_batch = self.batch_size if self.batch_size != -1 else self.num_train_samples
        if effective_batch is not None and effective_batch >= 1 and self.gradient_accumulation > effective_batch:
            problems.append(f"gradient_accumulation {self.gradient_accumulation} exceeds the batch size "
                            f"{effective_batch} (each micro-batch needs >= 1 prompt)")
        if self.log_top_token_logit_change_interval is not None and self.log_top_token_logit_change_interval < 1:
            problems.append(f"log_top_token_logit_change_interval must be >= 1 or null (only at the end), "
                            f"got {self.log_top_token_logit_change_interval}")
        if self.num_top_tokens < 1:
            problems.append(f"num_top_tokens must be >= 1, got {self.num_top_tokens}")
        return problems + self.output_token_problems()

    def __post_init__(self) -> None:
        normalize_off_values(self)  # num_train_samples -1 and load_model_checkpoint "" -> None
        if self.log_top_token_logit_change_interval is not None and self.log_top_token_logit_change_interval <= 0:
            self.log_top_token_logit_change_interval = None  # the reference's -1: no intermediate points

    @classmethod
    def input_file_hint(cls, field_name: str, value: str) -> str:
        return cls.INPUT_FILE_HINTS.get(field_name) or super().input_file_hint(field_name, value)

    def deferred_checks(self) -> list[str]:
        if self.model and tokenizer_without_conversion(self.model) is None:
            return [f"token check deferred to run start: the tokenizer of model {self.model!r} is not available "
                    "without conversion or download (output tokens are checked when each run starts)"]
        return []

    def output_token_problems(self) -> list[str]:
        """Each output/tracked token must be one vocabulary token. Checked only when the tokenizer is there
        without conversion or download (`deferred_checks` reports the other case); a tokenizer that is there but
        does not load is a problem naming it, never a silent skip."""
        if not self.model or tokenizer_without_conversion(self.model) is None:
            return []
        token_lists = {name: getattr(self, name) for name in
                       ("output_tokens_matching_yes", "output_tokens_matching_no", "track_logits_for_tokens")}
        try:
            return output_token_problems(self.model, token_lists)
        except Exception as error:  # noqa: BLE001 - whatever a broken tokenizer file raises is reported
            return [f"model {self.model!r}: the tokenizer in {tokenizer_without_conversion(self.model)} does not "
                    f"load ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); repair "
                    "or delete that directory (a built-in cache is rebuilt on next use)"]

    def resolved_train_samples_seed(self) -> int:
        """train_samples_random_seed, or random_seed when it is -1."""
        return self.train_samples_random_seed if self.train_samples_random_seed != -1 else self.random_seed
