"""Single-token preference training on persona prompts (Razin et al. 2025, Sec. 3) with displacement tracking.

    python persona_single_example_experiment_plan_runner.py --plan_config_path PLAN.json

One run, in three visible steps (as torchtune recipes do setup()/train()): `setup` loads the model, picks the
training prompts and their (y+, y-) tokens and computes the reference log-probs once (no second model); `train`
runs the optimizer steps with the configured objective, recording at every tracked step (see
`recording.py`); `finish` records the final point and writes into the run directory:
    metrics.jsonl          per step: loss (true batch mean), rewards/*, logps/*, logits/*, displacement/*,
                           hidden/*, tokens/* (at top-token points), tracked/*, grad_entanglement/*, lr, time/*
    top_tokens.jsonl       top-k tokens by probability / log-prob increase since init, per example
    tensors.safetensors    trajectories, per-example results, geometry, top tokens (safetensors.torch.load_file)
    model/                 the trained model, if save_model
and returning the summary (summary.json).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from common import grad_entanglement as ge
from common.config import ExperimentFamily, RunContext
from common.losses import PreferenceLogps, compute_preference_loss
from common.metric_keys import GRAD_ENTANGLEMENT_NUM_STEPS, NUM_STEPS, STEP_BATCH_KEYS, STEP_SECONDS, step_record
from common.models import load_model_and_tokenizer, save_model
from common.optim import build_optimizer
from common.sequence_logprobs import unwrap_model
from persona_experiments.config import PersonaConfig
from persona_experiments.data import (PersonaBatch, build_persona_batch, load_persona_examples, output_token_id,
                                      select_examples)
from persona_experiments.forward import last_position_forward, unembedding_matrix, use_sparse_embedding_gradient
from persona_experiments.geometry import unembedding_pair_geometry
from persona_experiments.recording import PersonaRecorder, PointValues

log = logging.getLogger("ld.persona")
TENSORS_FILE = "tensors.safetensors"


@dataclass
class StepOutput:
    """Result of one forward (and, when training, backward) pass over a batch split into micro-batches."""

    values: PointValues          # detached, rows in the order of the batch
    preferred_rewards: Tensor     # (B,)
    dispreferred_rewards: Tensor  # (B,)
    entanglement: list[dict]     # gradient-entanglement stats (empty unless due)


def _loss_on(config: PersonaConfig, out, batch: PersonaBatch, reference: tuple[Tensor, Tensor] | None):
    """Per-example summed log-probs of y+ / y- at the last position and the configured loss on them."""
    preferred = out.logprobs.gather(1, batch.preferred_ids.to(out.logprobs.device).view(-1, 1)).squeeze(1)
    dispreferred = out.logprobs.gather(1, batch.dispreferred_ids.to(out.logprobs.device).view(-1, 1)).squeeze(1)
    ones = torch.ones_like(preferred, dtype=torch.long)
    # reference None = this is the reference pass: the reference log-probs are the pass's own.
    ref_preferred, ref_dispreferred = reference if reference is not None else (preferred.detach(), dispreferred.detach())
    logps = PreferenceLogps(preferred, dispreferred, ref_preferred, ref_dispreferred, ones, ones)
    return logps, compute_preference_loss(config, logps)


def run_batch(model, config: PersonaConfig, batch: PersonaBatch, reference: tuple[Tensor, Tensor] | None,
              device: torch.device, num_micro_batches: int, train: bool, entanglement_params=None) -> StepOutput:
    """Forward `batch` in `num_micro_batches` micro-batches; with `train`, accumulate gradients of the batch-mean loss.

    `reference` holds the (B,) reference log-probs of y+ and y-; None marks the reference pass itself (the
    initial model's own log-probs serve as reference, so e.g. the DPO loss is ln 2).

    Each micro-batch contributes sum(losses) / B to the backward pass, so the accumulated gradient equals that of
    mean(losses) over the whole batch of B prompts (identical update for any split). With `entanglement_params`,
    gradient-entanglement statistics are computed on the first micro-batch (up to grad_entanglement_max_examples
    examples) before its backward.
    """
    size = len(batch)
    parts, entanglement = [], []
    for micro_index, rows in enumerate(torch.arange(size).tensor_split(num_micro_batches)):
        micro = batch.subset(rows)
        ref = tuple(r[rows.to(r.device)] for r in reference) if reference is not None else None
        with torch.set_grad_enabled(train):
            out = last_position_forward(model, micro.input_ids.to(device), micro.attention_mask.to(device),
                                        micro.last_index)
            logps, loss_out = _loss_on(config, out, micro, ref)
            if entanglement_params is not None and micro_index == 0:
                count = min(config.grad_entanglement_max_examples, len(micro))
                entanglement = ge.gradient_entanglement(
                    entanglement_params, [(logps.policy_chosen[i], logps.policy_rejected[i]) for i in range(count)])
            if train:
                (loss_out.losses.sum() / size).backward()
        parts.append((logps.policy_chosen.detach(), logps.policy_rejected.detach(), loss_out.losses.detach(),
                      out.hidden.detach(), out.logits.detach(), out.logprobs.detach(),
                      loss_out.chosen_rewards, loss_out.rejected_rewards))
    cat = [torch.cat(items) for items in zip(*parts)]
    return StepOutput(PointValues(*cat[:6]), cat[6], cat[7], entanglement)


def batch_means(step_out: StepOutput) -> list[float]:
    """Means over the batch of `step_out`, in `common.metric_keys.STEP_BATCH_KEYS` order: true mean loss (no
    accumulation scaling), rewards of y+ and y-, their margin, the fraction with margin > 0, log-probs of y+, y-."""
    values = step_out.values
    margins = step_out.preferred_rewards - step_out.dispreferred_rewards
    return [float(values.losses.mean()), float(step_out.preferred_rewards.mean()),
            float(step_out.dispreferred_rewards.mean()), float(margins.mean()), float((margins > 0).float().mean()),
            float(values.preferred_logps.mean()), float(values.dispreferred_logps.mean())]


def batch_scalars(step_out: StepOutput) -> dict[str, float]:
    """`batch_means` by name (loss, rewards/*, logps/*)."""
    return dict(zip(STEP_BATCH_KEYS, batch_means(step_out)))


@dataclass
class PersonaRun:
    """What `setup` prepares for `train` and `finish`: model, data, the initial (reference) point, the recorder."""

    config: PersonaConfig
    ctx: RunContext
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    batch: PersonaBatch
    batch_size: int          # prompts per optimizer step
    total_steps: int
    tracking_chunks: int     # forwards per no-grad pass over all prompts
    initial: PointValues     # the initial weights' values (reference pass)
    geometry_start: dict[str, Tensor]
    recorder: PersonaRecorder
    optimizer: torch.optim.Optimizer
    entanglement_params: list | None
    generator: torch.Generator
    started: float           # time.perf_counter() at the start of setup

    @property
    def reference(self) -> tuple[Tensor, Tensor]:
        """(N,) reference log-probs of y+ and y- (the initial model's)."""
        return self.initial.preferred_logps, self.initial.dispreferred_logps

    @property
    def full_batch(self) -> bool:
        return self.batch_size == len(self.batch)


@dataclass
class LoopState:
    """The training loop's bookkeeping: the step counter, timings and the gradient-entanglement diagnostics
    (`common.grad_entanglement.EntanglementLog`: a step's statistics are scored at the next full-batch point)."""

    setup_seconds: float = 0.0
    step: int = 0
    step_seconds: list[float] = field(default_factory=list)
    tracker_seconds: list[float] = field(default_factory=list)
    entanglement: ge.EntanglementLog = field(default_factory=ge.EntanglementLog)


def setup(config: PersonaConfig, ctx: RunContext) -> PersonaRun:
    """Model, data, the reference pass with the initial weights, recorder and optimizer (nothing trained yet)."""
    started = time.perf_counter()
    device = ctx.device
    # Model (the loader keeps pristine weights cached in-process) and data.
    model, tokenizer = load_model_and_tokenizer(
        config.model, checkpoint=config.load_model_checkpoint, is_lora_checkpoint=config.is_lora_checkpoint,
        use_lora=config.use_lora, lora_rank=config.lora_rank, dtype=config.dtype, device=device,
        device_map=config.device_map)
    model.eval()  # no dropout: the reference pass and the policy at step 0 must agree (DPO loss = ln 2)
    if config.device_map is not None:  # inputs go where the embedding layer is; accelerate moves the rest
        device = model.get_input_embeddings().weight.device
    else:
        use_sparse_embedding_gradient(model)  # same update, less work per step (see there)
    samples_seed = config.resolved_train_samples_seed()
    examples = select_examples(load_persona_examples(config.dataset), config.num_train_samples,
                               config.answer_matching_behavior_to_use, samples_seed)
    batch = build_persona_batch(tokenizer, examples, config.output_tokens_matching_yes,
                                config.output_tokens_matching_no, samples_seed)
    tracked_ids = [output_token_id(tokenizer, t, "track_logits_for_tokens") for t in config.track_logits_for_tokens]
    num_examples = len(batch)
    batch_size = num_examples if config.batch_size == -1 else min(config.batch_size, num_examples)
    if config.gradient_accumulation > batch_size:
        raise ValueError(f"gradient_accumulation {config.gradient_accumulation} exceeds the batch size {batch_size} "
                         f"({num_examples} training prompts)")
    steps_per_epoch = -(-num_examples // batch_size)
    total_steps = config.epochs * steps_per_epoch
    log.info("persona run: %d prompt(s) (rows %s), y+ %s, y- %s, %d step(s)", num_examples, batch.example_ids[:10],
             tokenizer.convert_ids_to_tokens(batch.preferred_ids.tolist()[:10]),
             tokenizer.convert_ids_to_tokens(batch.dispreferred_ids.tolist()[:10]), total_steps)

    # Reference pass with the initial weights: reference log-probs, initial distribution, hidden states, geometry.
    # Passes over all N prompts without gradients are split like the training steps (about batch_size /
    # gradient_accumulation prompts per forward), so e.g. an SFT over 1000 prompts never forwards them at once.
    tracking_chunks = min(num_examples, config.gradient_accumulation * steps_per_epoch)
    initial = run_batch(model, config, batch, None, device, tracking_chunks, train=False).values
    geometry_start = unembedding_pair_geometry(unembedding_matrix(model), batch.preferred_ids, batch.dispreferred_ids)
    recorder = PersonaRecorder(initial, batch.preferred_ids, batch.dispreferred_ids, batch.example_ids, tracked_ids,
                               list(config.track_logits_for_tokens), tokenizer, ctx.run_dir,
                               config.log_top_token_logit_change_interval, config.num_top_tokens,
                               config.save_finegrained_token_metrics)
    optimizer = build_optimizer(config.optimizer, model.parameters(), config.lr)
    entanglement_params = (ge.select_parameters(unwrap_model(model), config.grad_entanglement_params)
                           if config.grad_entanglement_interval is not None else None)
    return PersonaRun(config, ctx, model, tokenizer, device, batch, batch_size, total_steps, tracking_chunks, initial,
                      geometry_start, recorder, optimizer, entanglement_params,
                      torch.Generator().manual_seed(ctx.seed), started)


def train(run: PersonaRun, state: LoopState) -> None:
    """The training loop (advances `state`); logs one record per optimizer step (see `_train_step`).

    Step numbering (shared with preference_training/trainer.py): the record logged at step s holds values measured
    on the weights after s optimizer updates (s = 0: initial weights). Training scalars (loss, rewards/*, logps/*)
    are the means over the step's (mini-)batch; the tracker's full-set statistics use their own keys
    (displacement/*, hidden/*, tokens/*). Tracked points: every step with full batch (values from the step's own
    forward, i.e. before its update), else the start of each epoch (an extra no-grad pass; the initial pass serves
    epoch 1); plus one after training (`finish`).
    """
    config, num_examples = run.config, len(run.batch)
    with tqdm(total=run.total_steps, desc=f"persona {run.ctx.run_dir.name}", leave=False) as progress:
        for epoch in range(config.epochs):
            order = (torch.arange(num_examples) if run.full_batch
                     else torch.randperm(num_examples, generator=run.generator))
            epoch_scalars: dict[str, float] = {}
            if not run.full_batch:
                tick = time.perf_counter()
                point = run.initial if epoch == 0 else run_batch(run.model, config, run.batch, run.reference,
                                                                  run.device, run.tracking_chunks, False).values
                epoch_scalars = run.recorder.record(state.step, point)
                state.tracker_seconds.append(time.perf_counter() - tick)
            for batch_index, rows in enumerate(order.split(run.batch_size)):
                _train_step(run, state, rows, epoch, epoch_scalars if batch_index == 0 else {})
                progress.update(1)


def _train_step(run: PersonaRun, state: LoopState, rows: Tensor, epoch: int, epoch_scalars: dict[str, float]) -> None:
    """One optimizer step on the prompts `rows`, and its record: the step's batch means (`step_record`), the
    tracker at this point (full batch) or the epoch's first point (`epoch_scalars`), entanglement, timing."""
    config, model, optimizer = run.config, run.model, run.optimizer
    tick = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    due = run.entanglement_params is not None and ge.is_due(config.grad_entanglement_interval, state.step)
    out = run_batch(model, config, run.batch.subset(rows), tuple(r[rows] for r in run.reference), run.device,
                    config.gradient_accumulation, True, run.entanglement_params if due else None)
    optimizer.step()
    state.step_seconds.append(time.perf_counter() - tick)
    tick = time.perf_counter()
    # the step's record: batch means, the rate of this update (as the dataset-level trainer reads it)
    scalars = step_record(batch_means(out), lr=optimizer.param_groups[0]["lr"], epoch=epoch + 1)
    if run.full_batch:
        scalars.update(run.recorder.record(state.step, out.values))
        scalars.update(_score(state.entanglement, out.values))  # the previous step's first-order predictions
    else:
        scalars.update(epoch_scalars)
    # with mini-batches no later point measures the same examples before further updates: nothing to score
    scalars.update(state.entanglement.measure(out.entanglement, score_later=run.full_batch))
    state.tracker_seconds.append(time.perf_counter() - tick)
    scalars[STEP_SECONDS] = state.step_seconds[-1]
    run.ctx.logger.log(state.step, **scalars)
    state.step += 1


def finish(run: PersonaRun, state: LoopState) -> dict:
    """The final point (after the last update), geometry at the end, the output files; returns the summary."""
    config, ctx, model, tokenizer, batch = run.config, run.ctx, run.model, run.tokenizer, run.batch
    final = run_batch(model, config, batch, run.reference, run.device, run.tracking_chunks, train=False)
    scalars = run.recorder.record(state.step, final.values, is_final=True)
    if run.full_batch:  # the training batch is the full set: its statistics after the last update
        scalars.update(batch_scalars(final))
    scalars.update(_score(state.entanglement, final.values))
    ctx.logger.log(state.step, **scalars)
    geometry_end = unembedding_pair_geometry(unembedding_matrix(model), batch.preferred_ids, batch.dispreferred_ids)
    run.recorder.tracker.save_tensors(ctx.run_dir / TENSORS_FILE,
                                      extra=run.recorder.tensors(run.geometry_start, geometry_end))
    if config.save_model:
        save_model(model, tokenizer, ctx.run_dir / "model")

    summary = run.recorder.summary(run.geometry_start, geometry_end)
    summary.update(state.entanglement.summary_over_examples(GRAD_ENTANGLEMENT_NUM_STEPS))
    summary.update({
        "num_train_samples": len(batch),
        NUM_STEPS: run.total_steps,
        "example_ids": batch.example_ids,
        "preferred_tokens": tokenizer.convert_ids_to_tokens(batch.preferred_ids.tolist()),
        "dispreferred_tokens": tokenizer.convert_ids_to_tokens(batch.dispreferred_ids.tolist()),
        "preferred_token_texts": [tokenizer.decode([i]) for i in batch.preferred_ids.tolist()],
        "dispreferred_token_texts": [tokenizer.decode([i]) for i in batch.dispreferred_ids.tolist()],
        "loss_ever_increased": bool(summary.get("mean_loss_ever_increased", False)),
        "tensors_file": TENSORS_FILE,
    })
    ctx.timings.update(setup_seconds=state.setup_seconds,
                       seconds_per_step_mean=sum(state.step_seconds) / len(state.step_seconds),
                       tracker_seconds_per_step_mean=sum(state.tracker_seconds) / max(len(state.step_seconds), 1),
                       total_seconds=time.perf_counter() - run.started)
    return summary


def run_persona_experiment(config: PersonaConfig, ctx: RunContext) -> dict:
    """Train one persona single-token run (see module docstring): setup, train loop, finish; returns the summary."""
    run = setup(config, ctx)
    state = LoopState(setup_seconds=time.perf_counter() - run.started)
    train(run, state)
    return finish(run, state)


def _score(entanglement: ge.EntanglementLog, values: PointValues) -> dict[str, float]:
    """The pending first-order predictions vs the log-probs of y+ / y- observed at this point ({} if none)."""
    return entanglement.score(values.preferred_logps.tolist(), values.dispreferred_logps.tolist())


FAMILY = ExperimentFamily(name="persona_single_example", config_cls=PersonaConfig, run=run_persona_experiment)
