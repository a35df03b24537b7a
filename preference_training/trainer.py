"""Dataset-level preference trainer (DPO, IPO and every loss of `common/losses.py`) with displacement tracking.

API for experiment families (the similarity-quantile runs in `preference_similarity/`, the SORRY-Bench runs):

    from preference_training.trainer import train_preference_model
    result = train_preference_model(config, train_examples, eval_examples, ctx)
    result.model, result.tokenizer   # the trained model (unwrapped, eval mode, on the run's device)
    result.summary                   # JSON-able dict: counts, final eval metrics, tracker summaries (timings: ctx.timings)

`config` is a `PreferenceTrainingConfig` (or a subclass adding family fields), the examples are
`common.preference_data.PreferenceExample` lists (pick them with `preference_training.selection.select_examples`
or your own logic; `eval_examples` may be empty), `ctx` the runner's `RunContext`. Post-training evaluation
(e.g. refusal rates) is the caller's: it gets the model back.

What one run does, in order (the order matters: the reference pass must see the initial weights):
  1. load the model (dropout off, as TRL's `disable_dropout`) and tokenize prompt/responses separately;
  2. reference log-probs of the training and held-out pairs with the initial model (or `ref_model`), no gradients,
     cached on disk (no reference model stays in memory);
  3. evaluate (step 0), train `epochs` epochs (batches reshuffled with `random_seed` each epoch), evaluating
     every `eval_every` epochs and after the last one;
  4. save the model if asked.
Per step, each pair's loss is backpropagated right after its own forward (padding-free path) with weight 1/B,
so the accumulated gradient is exactly that of the batch-mean loss while only one pair's activations are alive.

Files in ctx.run_dir (main process only): `eval_metrics.jsonl` (one line per evaluation point, names in
`preference_training/evaluation.py`), `displacement_<split>.safetensors` (per-example trajectories,
`DisplacementTracker`),
`model/` (with `save_model`), `checkpoints/step_<N>/`, `checkpoints/epoch_<E>/` (with `save_steps`,
`save_every_epochs`). Per-step metrics go to `ctx.logger`: loss, rewards/{chosen,rejected,margins,accuracies},
logps/{chosen,rejected} (means over the step's batch), lr (the rate of that step's update, after the scheduler),
grad_norm (with `max_grad_norm`: the norm before clipping), epoch.
TRL-named settings (scheduler, clipping, bf16/fp16, gradient checkpointing, `ref_model`): `common/training_settings.py`;
`torch_compile` (the elementwise blocks only): `common/compiled_blocks.py`.
Step numbering (shared with the persona trainer): a record at step s holds values measured on the weights after
s optimizer updates, so the first batch's loss is logged at step 0 next to the initial evaluation, and the
evaluation after the k-th update at step k.
Under `torchrun --nproc_per_node W` the same code runs as DDP through accelerate (see `common/distributed.py`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from common.compiled_blocks import compiled_elementwise_blocks
from common.config import RunContext
from common.distributed import ProcessGroup
from common.losses import PreferenceLogps, compute_preference_loss
from common.metric_keys import GRAD_NORM, NUM_STEPS, STEP_BATCH_KEYS, step_record, tracker_key
from common.metrics_logger import MetricsLogger
from common.models import load_model_and_tokenizer, save_model
from common.optim import build_lr_scheduler, build_optimizer
from common.preference_data import PreferenceExample, TokenizedPair
from common.preference_tokenization import TokenizationOptions, tokenize_pair
from common.sequence_logprobs import pad_token_id_of, supports_logits_to_keep
from common.tracker import DisplacementTracker
from common.training_settings import (MixedPrecision, clip_gradients, disable_gradient_checkpointing,
                                      enable_gradient_checkpointing)
from preference_training.config import PreferenceTrainingConfig
from preference_training.entanglement import EntanglementProbe
from preference_training.evaluation import split_eval_metrics
from preference_training.logprobs import LogpsOptions, compute_split_logps, reference_cache_key, reference_logps

log = logging.getLogger("ld.preference_trainer")


@dataclass
class PreferenceTrainingResult:
    """What `train_preference_model` returns (model and tokenizer are on every process; summary too)."""

    model: torch.nn.Module
    tokenizer: object
    summary: dict


@dataclass
class TrainingSplit:
    """Tokenized pairs of one split ("train" or "test") with their reference log-probs and tracker.

    Attributes:
        name: Split name used in metric keys.
        pairs: The N tokenized pairs.
        reference_chosen, reference_rejected: (N,) float32 log-probs under the initial model (nats).
        tracker: Per-example displacement bookkeeping over the evaluation points.
    """

    name: str
    pairs: list[TokenizedPair]
    reference_chosen: torch.Tensor
    reference_rejected: torch.Tensor
    tracker: DisplacementTracker

    def lengths(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.tensor([len(p.chosen_ids) for p in self.pairs]),
                torch.tensor([len(p.rejected_ids) for p in self.pairs]))


def tokenize_examples(tokenizer, examples: Sequence[PreferenceExample], max_input_length: int | None,
                      options: TokenizationOptions = TokenizationOptions()
                      ) -> tuple[list[TokenizedPair], dict[str, int]]:
    """Tokenized pairs (unusable ones dropped: with `truncation` "paper" that includes prompts longer than
    `max_input_length`, as the reference trainer's filter) and the count of each skip reason."""
    pairs, skipped = [], Counter()
    for example in examples:
        pair = tokenize_pair(tokenizer, example, max_input_length, options)
        if isinstance(pair, str):
            skipped[pair] += 1
        else:
            pairs.append(pair)
    return pairs, dict(skipped)


def _load_model(config: PreferenceTrainingConfig, device: torch.device, precision: MixedPrecision):
    model, tokenizer = load_model_and_tokenizer(
        config.model, checkpoint=config.checkpoint, is_lora_checkpoint=config.is_lora_checkpoint,
        use_lora=config.use_lora, lora_rank=config.lora_rank, dtype=config.dtype, device=device,
        lora_alpha=config.lora_alpha, lora_target_modules=config.lora_target_modules,
        lora_dropout=config.lora_dropout)
    model.eval()  # no dropout anywhere: policy and reference log-probs are deterministic functions
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)  # training mode (needed by transformers) with every dropout at 0
    precision.wrap_forward(model)
    return model, tokenizer


def _load_reference_model(config: PreferenceTrainingConfig, tokenizer, device: torch.device,
                          precision: MixedPrecision) -> torch.nn.Module | None:
    """The separate reference model `ref_model` (eval mode, same dtype and autocast), or None without one.
    Raises ValueError when its tokenizer's vocabulary differs from the policy's (the token ids must agree)."""
    if not config.ref_model:
        return None
    reference, reference_tokenizer = load_model_and_tokenizer(config.ref_model, dtype=config.dtype, device=device)
    if reference_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"ref_model {config.ref_model!r} has another tokenizer vocabulary than model "
                         f"{config.model!r}; the reference must tokenize the pairs identically")
    reference.eval()
    precision.wrap_forward(reference)
    return reference


def _cache_dir(config: PreferenceTrainingConfig) -> Path | None:
    if config.reference_cache_dir is None:
        return Path(config.outputs_dir) / ".reference_cache"
    return Path(config.reference_cache_dir) if config.reference_cache_dir else None


def _step_batches(order: list[int], batch_size: int, world_size: int) -> list[list[int]]:
    """Consecutive batches of `order`; under W processes a final batch with fewer than W pairs is dropped."""
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    return [batch for batch in batches if len(batch) >= world_size]


def accumulate_step_gradients(model: torch.nn.Module, split: TrainingSplit, positions: Sequence[int], scale: float,
                              config: PreferenceTrainingConfig, options: LogpsOptions, group: ProcessGroup,
                              precision: MixedPrecision | None = None) -> torch.Tensor:
    """Add d(scale * sum_i loss_i)/d(theta) over this process's pairs `positions` to the parameters' .grad.

    The pairs are processed one at a time (padding-free) or in `gradient_accumulation` micro-batches; the
    gradients are all-reduced on the last backward only; with fp16 the loss is scaled by `precision`. Returns the
    sums over these pairs of the STEP_BATCH_KEYS values (shape (7,), float64; divide by the global batch size for
    means).
    """
    device = group.device
    if config.padding_free:
        chunks = [[position] for position in positions]
    else:
        size = -(-len(positions) // config.gradient_accumulation)  # ceil(len / gradient_accumulation)
        chunks = [list(positions[start:start + size]) for start in range(0, len(positions), size)]
    chosen_lengths, rejected_lengths = split.lengths()
    sums = torch.zeros(len(STEP_BATCH_KEYS), dtype=torch.float64)
    for index, chunk in enumerate(chunks):
        with group.sync_context(model, sync=index == len(chunks) - 1):
            policy_chosen, policy_rejected = options.logps(model, [split.pairs[i] for i in chunk],
                                                           direct_weight_grads=True)  # backward below
            logps = PreferenceLogps(policy_chosen, policy_rejected, split.reference_chosen[chunk].to(device),
                                    split.reference_rejected[chunk].to(device), chosen_lengths[chunk].to(device),
                                    rejected_lengths[chunk].to(device))
            output = compute_preference_loss(config, logps)
            loss = output.losses.sum() * scale
            group.backward(loss if precision is None else precision.scale(loss))
        margins = output.chosen_rewards - output.rejected_rewards
        values = (output.losses.detach(), output.chosen_rewards, output.rejected_rewards, margins,
                  (margins > 0).float(), policy_chosen.detach(), policy_rejected.detach())
        sums += torch.stack([v.double().sum().cpu() for v in values])
    return sums


class _Evaluator:
    """Evaluation points: split log-probs -> eval metrics, trackers, eval_metrics.jsonl (main process)."""

    def __init__(self, splits: list[TrainingSplit], config: PreferenceTrainingConfig, options: LogpsOptions,
                 group: ProcessGroup, ctx: RunContext):
        self.splits, self.config, self.options, self.group, self.ctx = splits, config, options, group, ctx
        self.reference_is_initial = not config.ref_model  # with a separate ref_model step 0 is measured too
        self.file = MetricsLogger(ctx.run_dir, filename="eval_metrics.jsonl") if group.is_main else None
        self.last: dict[str, float] = {}

    def __call__(self, model: torch.nn.Module, step: int, epoch: int) -> dict[str, float]:
        """Evaluate every split at `step`. At step 0 the model is the initial one, whose log-probs are the
        reference log-probs (same weights, same code), so they are reused instead of recomputed (unless a separate
        `ref_model` made them)."""
        metrics: dict[str, float] = {}
        for split in self.splits:
            if step == 0 and self.reference_is_initial:
                chosen, rejected = split.reference_chosen, split.reference_rejected
            else:
                chosen, rejected = compute_split_logps(model, split.pairs, self.options, self.group,
                                                       f"eval {split.name} (step {step})")
            metrics.update(split_eval_metrics(split.name, chosen, rejected, split.reference_chosen,
                                              split.reference_rejected, *split.lengths(), self.config))
            tracked = split.tracker.update(step, chosen, rejected)
            metrics.update({key.replace("displacement/", f"displacement/{split.name}/"): value
                            for key, value in tracked.items() if key.startswith("displacement/")})
        if self.group.is_main:
            self.file.log(step, epoch=epoch, **metrics)
            self.ctx.logger.log(step, epoch=epoch, **metrics)
        self.last = metrics
        return metrics

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _prepare_splits(model, tokenizer, config, train_examples, eval_examples, options, group, precision
                    ) -> tuple[list[TrainingSplit], dict]:
    """Tokenize both splits and get their reference log-probs (cache, `ref_model` or the initial model)."""
    splits, info = [], {}
    reference = _load_reference_model(config, tokenizer, group.device, precision)
    dtype_key = "+".join(filter(None, (config.dtype, precision.tag)))
    for name, examples in (("train", train_examples), ("test", eval_examples)):
        tokenization = TokenizationOptions(truncation=config.truncation, skip_identical=config.skip_identical_pairs)
        pairs, skipped = tokenize_examples(tokenizer, examples, config.max_input_length, tokenization)
        if skipped:
            log.info("%s split: dropped %d of %d pairs %s", name, len(examples) - len(pairs), len(examples), skipped)
        info[f"num_{name}_pairs"], info[f"skipped_{name}_pairs"] = len(pairs), skipped
        if not pairs:
            if name == "train":
                raise ValueError(f"no usable training pairs out of {len(examples)} examples (skipped: {skipped})")
            continue
        # a local ref_model directory is fingerprinted like a checkpoint (rewritten weights are not a cache hit)
        ref_directory = config.ref_model if reference is not None and Path(config.ref_model).is_dir() else None
        key = reference_cache_key(model=config.ref_model or config.model,
                                  checkpoint=ref_directory if reference is not None else config.checkpoint,
                                  is_lora_checkpoint=reference is None and config.is_lora_checkpoint,
                                  dtype=dtype_key, tokenizer=tokenizer, max_input_length=config.max_input_length,
                                  pairs=pairs)
        chosen, rejected, hit = reference_logps(model if reference is None else reference, pairs, options, group,
                                                _cache_dir(config), key, f"reference log-probs ({name})")
        info[f"reference_cache_hit/{name}"] = hit
        tracker = DisplacementTracker(len(pairs), example_ids=[p.source_index for p in pairs])
        splits.append(TrainingSplit(name, pairs, chosen, rejected, tracker))
    return splits, info


def _save_checkpoint(model: torch.nn.Module, tokenizer, group: ProcessGroup, directory: Path) -> None:
    """An intermediate checkpoint (as `save_model`: a LoRA model saves its adapter only); every process joins."""
    state_dict = group.full_state_dict(model)  # collective under FSDP
    if group.is_main:
        save_model(group.unwrap(model), tokenizer, directory, state_dict=state_dict)
    group.barrier()


def train_preference_model(config: PreferenceTrainingConfig, train_examples: Sequence[PreferenceExample],
                           eval_examples: Sequence[PreferenceExample], ctx: RunContext) -> PreferenceTrainingResult:
    """Train on `train_examples`, evaluating on them and on `eval_examples`; see the module docstring."""
    group = ProcessGroup(ctx.device)
    precision = MixedPrecision.from_flags(config.bf16, config.fp16, group.device)
    model, tokenizer = _load_model(config, group.device, precision)
    with compiled_elementwise_blocks(model, enabled=config.torch_compile):  # restored before returning
        return _train_loaded_model(config, model, tokenizer, train_examples, eval_examples, ctx, group, precision)


def _train_loaded_model(config: PreferenceTrainingConfig, model: torch.nn.Module, tokenizer,
                        train_examples: Sequence[PreferenceExample], eval_examples: Sequence[PreferenceExample],
                        ctx: RunContext, group: ProcessGroup, precision: MixedPrecision) -> PreferenceTrainingResult:
    """The body of `train_preference_model` once the policy is loaded."""
    pad_token_id = pad_token_id_of(tokenizer)
    options = LogpsOptions(config.padding_free, config.share_prompt,
                           max(1, config.batch_size // config.gradient_accumulation), pad_token_id,
                           supports_logits_to_keep(model))
    started = time.time()
    splits, summary = _prepare_splits(model, tokenizer, config, train_examples, eval_examples, options, group,
                                      precision)
    ctx.timings["reference_seconds"] = time.time() - started
    optimizer = build_optimizer(config.optimizer, model.parameters(), config.lr, weight_decay=config.weight_decay,
                                device=group.device)
    model, optimizer = group.prepare(model, optimizer)
    steps_per_epoch = len(_step_batches(list(range(len(splits[0].pairs))), config.batch_size, group.world_size))
    scheduler = build_lr_scheduler(optimizer, config.lr_scheduler_type, steps_per_epoch * config.epochs,
                                   config.warmup_steps, config.warmup_ratio)
    evaluator = _Evaluator(splits, config, options, group, ctx)
    probe = EntanglementProbe(config, splits[0].pairs, options, group)
    train = splits[0]
    generator = torch.Generator().manual_seed(ctx.seed)
    step, train_seconds, epoch_losses = 0, 0.0, []
    evaluator(model, step, epoch=0)
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(len(train.pairs), generator=generator).tolist()
        batches = _step_batches(order, config.batch_size, group.world_size)
        epoch_loss_sum, epoch_count = 0.0, 0
        for batch in tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", unit="step", leave=False,
                          disable=not group.is_main):
            step_started = time.time()
            probe.before_step(model, step)
            sums = accumulate_step_gradients(model, train, batch[group.rank::group.world_size],
                                             group.world_size / len(batch), config, options, group, precision)
            step_lr = optimizer.param_groups[0]["lr"]  # the rate of this update (before the scheduler moves it)
            clip_metrics = {} if config.max_grad_norm is None else {
                GRAD_NORM: clip_gradients(model, optimizer, config.max_grad_norm, precision, group.accelerator)}
            precision.step(optimizer)
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            probe_metrics = probe.after_step(model, step + 1)
            train_seconds += time.time() - step_started
            means = group.sum(sums) / len(batch)
            epoch_loss_sum, epoch_count = epoch_loss_sum + float(means[0]) * len(batch), epoch_count + len(batch)
            if group.is_main:  # logged at `step`: the batch was measured on the weights after `step` updates
                ctx.logger.log(step, **step_record(means.tolist(), lr=step_lr, epoch=epoch), **clip_metrics,
                               **probe_metrics)
            step += 1
            if config.save_steps and step % config.save_steps == 0:
                _save_checkpoint(model, tokenizer, group, ctx.run_dir / "checkpoints" / f"step_{step}")
        epoch_losses.append(epoch_loss_sum / max(epoch_count, 1))
        if epoch == config.epochs or (config.eval_every is not None and epoch % config.eval_every == 0):
            evaluator(model, step, epoch=epoch)
        if config.save_every_epochs and epoch % config.save_every_epochs == 0:
            _save_checkpoint(model, tokenizer, group, ctx.run_dir / "checkpoints" / f"epoch_{epoch}")
    evaluator.close()
    ctx.timings.update(train_seconds=train_seconds, seconds_per_step=train_seconds / max(step, 1))
    summary.update({NUM_STEPS: step}, epoch_mean_losses=epoch_losses, world_size=group.world_size, **evaluator.last,
                   **probe.summary())
    for split in splits:
        summary.update({tracker_key(split.name, k): v for k, v in split.tracker.summary().items()})
        if group.is_main:
            split.tracker.save_tensors(ctx.run_dir / f"displacement_{split.name}.safetensors")
    state_dict = group.full_state_dict(model) if config.save_model else None  # collective under FSDP
    model = group.unwrap(model)
    if config.gradient_checkpointing:  # back to the documented state: evaluation mode, no recomputation
        disable_gradient_checkpointing(model)
    if config.save_model and group.is_main:
        save_model(model, tokenizer, ctx.run_dir / "model", state_dict=state_dict)
    group.barrier()
    return PreferenceTrainingResult(model, tokenizer, summary)
