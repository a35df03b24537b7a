"""Likelihood-displacement tracking inside `transformers.Trainer` / `trl.DPOTrainer` training: a callback.

    from integrations import track_displacement
    trainer = DPOTrainer(model=model, args=DPOConfig(..., precompute_ref_log_probs=True), train_dataset=train,
                         processing_class=tokenizer)
    callback = track_displacement(trainer, probe=list(range(32)), every_n_steps=10)   # or probe=<a Dataset>
    trainer.train()
    print(format_displacement_table(callback.records))

Every `every_n_steps` optimiser steps (and at the first and the last step) the callback measures, for each probe pair
(tokenised by the trainer itself, `integrations.trl_probe`), log pi(y+|x) and log pi(y-|x) summed over the response
tokens with `common.sequence_logprobs` (the one log-prob function of the toolkit; model in eval mode, no grad), and
feeds them to `common.tracker.DisplacementTracker` (the one definition of the displacement metrics: change since step
0 in nats, fraction of pairs whose preferred log-prob fell since step 0 = "displaced", largest decrease of the
preferred probability so far, ...). Optionally:
  * `top_tokens=k`: the k next tokens whose probability / log-prob at the first response position rose most since
    step 0 (`persona_experiments.token_tracking.top_token_changes`), for the first `top_token_examples` pairs, one
    JSON line per measurement in `top_tokens.jsonl`;
  * `grad_entanglement=True`: <g+, g->, norms, cosine and the first-order displacement predictions of
    `common.grad_entanglement` for the first `grad_entanglement_max_examples` probe pairs (two extra backward passes
    each), and how well the previous measurement's predictions matched what happened.

Logging: the scalars (keys prefixed `probe/`, e.g. `probe/displacement/frac_preferred_fell_since_init`) go through the
base `transformers.Trainer.log`, so they land in `trainer.state.log_history` and every `report_to` integration
(wandb, TensorBoard, ...). The TRL trainer's own `log` override is bypassed on purpose: it would consume the
training-batch metrics it averages until its next logging step.

Run directory (`output_dir`, default `<args.output_dir>/displacement`), the toolkit's layout: `config.json` (written at
the start: callback settings, trainer class, model, training arguments), `metrics.jsonl` (one line per measurement,
`step` = optimiser steps done), `summary.json` (at the end: `tracker/probe/<metric>` aggregates as the dataset-level
trainer writes them), `displacement_probe.safetensors` (per-pair trajectories) and `plots/`.

Processes: only the main process measures and writes; use it with one process or DDP (not FSDP/ZeRO-3, whose
forward needs every rank).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
import transformers
from transformers import TrainerCallback

from common.grad_entanglement import (PARAMETER_SUBSETS, gradient_entanglement, score_predictions, select_parameters,
                                      summarize_entanglement)
from common.io_utils import atomic_write_json, to_jsonable
from common.metrics_logger import MetricsLogger
from common.preference_data import TokenizedPair
from common.sequence_logprobs import batch_logps_padded, pair_logps, supports_logits_to_keep, unwrap_model
from common.tracker import DisplacementTracker
from integrations.print_displacement import PREFIX
from integrations.trl_probe import probe_pairs
from persona_experiments.token_tracking import describe_top_tokens, top_token_changes


def probe_logps(model: torch.nn.Module, pairs: Sequence[TokenizedPair], *, batch_size: int = 1,
                pad_token_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) log pi(y+|x) and (N,) log pi(y-|x) of `pairs` (nats), through `common.sequence_logprobs`.

    `batch_size` 1 runs `pair_logps` one pair at a time (padding-free, prompt shared: fastest on CPU); larger batches
    run `batch_logps_padded` (right padding with `pad_token_id`, for GPUs). Gradients flow if grad mode is on.
    """
    if batch_size == 1:
        results = [pair_logps(model, pair) for pair in pairs]
        return torch.stack([c for c, _ in results]), torch.stack([r for _, r in results])
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        c, r = batch_logps_padded(model, pairs[start:start + batch_size], pad_token_id)
        chosen.append(c)
        rejected.append(r)
    return torch.cat(chosen), torch.cat(rejected)


def first_response_logprobs(model: torch.nn.Module, pairs: Sequence[TokenizedPair]) -> torch.Tensor:
    """(N, V) next-token log-probs at the last prompt token (the position that predicts response token 1), fp32."""
    device = next(model.parameters()).device
    last_only = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}
    rows = []
    for pair in pairs:
        logits = model(input_ids=torch.tensor([pair.prompt_ids], device=device), use_cache=False,
                       **last_only).logits[0, -1]
        rows.append(torch.log_softmax(logits.float(), dim=-1))
    return torch.stack(rows)


class DisplacementCallback(TrainerCallback):
    """Measures likelihood displacement on a fixed probe set during `trainer.train()` (see the module docstring).

    Args:
        trainer: The `transformers.Trainer` / TRL preference trainer (built already: its tokenisation is reused).
        probe: Row indices into `trainer.train_dataset`, or a `datasets.Dataset` (raw preference rows in the
            trainer's format, or tokenised `prompt_ids`/`chosen_ids`/`rejected_ids`); see `integrations.trl_probe`.
        every_n_steps: Measure after every this many optimiser steps (>= 1), plus step 0 and the last step.
        output_dir: Run directory; None = `<trainer.args.output_dir>/displacement`.
        batch_size: Probe pairs per forward; None = 1 on CPU (padding-free), 8 on an accelerator.
        top_tokens: k >= 0 tokens with the largest increase to record per measurement (0 = off).
        top_token_examples: Number of leading probe pairs whose top tokens are recorded. Default 4.
        grad_entanglement: Compute gradient-entanglement statistics on the probe (off by default).
        grad_entanglement_params: Parameter subset of the gradients, one of `PARAMETER_SUBSETS`. Default
            "unembedding" ("lora" for a PEFT model).
        grad_entanglement_max_examples: Leading probe pairs used for it (>= 1). Default 4.
        save_plots: Write `plots/` (overview panels, `common.plots`) at the end. Default True.
    """

    def __init__(self, trainer: Any, probe: Any, *, every_n_steps: int = 10, output_dir: str | Path | None = None,
                 batch_size: int | None = None, top_tokens: int = 0, top_token_examples: int = 4,
                 grad_entanglement: bool = False, grad_entanglement_params: str | None = None,
                 grad_entanglement_max_examples: int = 4, save_plots: bool = True):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if top_tokens < 0 or top_token_examples < 1 or grad_entanglement_max_examples < 1:
            raise ValueError(f"top_tokens must be >= 0 and top_token_examples, grad_entanglement_max_examples >= 1; "
                             f"got {top_tokens}, {top_token_examples}, {grad_entanglement_max_examples}")
        is_peft = hasattr(trainer.model, "get_base_model")
        params = grad_entanglement_params or ("lora" if is_peft else "unembedding")
        if params not in PARAMETER_SUBSETS:
            raise ValueError(f"grad_entanglement_params: unknown {params!r}; expected one of {list(PARAMETER_SUBSETS)}")
        self.trainer = trainer
        self.pairs = probe_pairs(trainer, probe)
        self.every_n_steps = every_n_steps
        self.output_dir = Path(output_dir) if output_dir is not None else Path(trainer.args.output_dir) / "displacement"
        on_cpu = trainer.args.device.type == "cpu"
        self.batch_size = batch_size or (1 if on_cpu else 8)
        self.top_tokens, self.top_token_examples = top_tokens, top_token_examples
        self.grad_entanglement, self.grad_entanglement_params = grad_entanglement, params
        self.grad_entanglement_max_examples = grad_entanglement_max_examples
        self.save_plots = save_plots
        self.tracker = DisplacementTracker(len(self.pairs), example_ids=[p.source_index for p in self.pairs])
        self.records: list[dict] = []
        self._logger: MetricsLogger | None = None
        self._initial_next_token: torch.Tensor | None = None
        self._previous_entanglement: list[dict] | None = None

    # ------------------------------------------------------------------------------------------- settings / files

    def settings(self) -> dict:
        """The callback's settings, as written to config.json."""
        return {"num_probe_pairs": len(self.pairs), "probe_source_indices": [p.source_index for p in self.pairs],
                "every_n_steps": self.every_n_steps, "batch_size": self.batch_size, "top_tokens": self.top_tokens,
                "top_token_examples": self.top_token_examples, "grad_entanglement": self.grad_entanglement,
                "grad_entanglement_params": self.grad_entanglement_params,
                "grad_entanglement_max_examples": self.grad_entanglement_max_examples}

    def _write_config(self) -> None:
        model = unwrap_model(self.trainer.model)
        config = {"callback": self.settings(), "trainer": type(self.trainer).__name__,
                  "model": getattr(model.config, "_name_or_path", "") or type(model).__name__,
                  "training_args": to_jsonable(self.trainer.args.to_dict())}
        atomic_write_json(self.output_dir / "config.json", config)

    # ----------------------------------------------------------------------------------------------- measuring

    def _pad_token_id(self) -> int:
        tokenizer = getattr(self.trainer, "processing_class", None)
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        return getattr(tokenizer, "pad_token_id", None) or 0

    def _entanglement(self, model: torch.nn.Module, chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
        """Gradient-entanglement scalars now, and the accuracy of the previous measurement's predictions."""
        count = min(self.grad_entanglement_max_examples, len(self.pairs))
        scalars: dict[str, float] = {}
        if self._previous_entanglement is not None:
            scored = score_predictions(self._previous_entanglement, chosen[:count].tolist(), rejected[:count].tolist())
            scalars.update({f"{PREFIX}grad_entanglement/{k}": v for k, v in scored.items()})
        with torch.enable_grad():
            params = select_parameters(model, self.grad_entanglement_params)
            stats = gradient_entanglement(params, (pair_logps(model, pair) for pair in self.pairs[:count]))
        self._previous_entanglement = stats
        scalars.update(summarize_entanglement(stats, prefix=f"{PREFIX}grad_entanglement/"))
        return scalars

    def _top_tokens(self, model: torch.nn.Module, step: int) -> None:
        pairs = self.pairs[:self.top_token_examples]
        logprobs = first_response_logprobs(model, pairs).cpu()
        if self._initial_next_token is None:
            self._initial_next_token = logprobs
        changes = top_token_changes(logprobs, self._initial_next_token,
                                    torch.tensor([p.chosen_ids[0] for p in pairs]), self.top_tokens)
        tokenizer = self.trainer.processing_class
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        examples = [dict(source_index=p.source_index, **describe_top_tokens(changes, tokenizer, i))
                    for i, p in enumerate(pairs)]
        line = {"step": step, "examples": examples}
        with (self.output_dir / "top_tokens.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(to_jsonable(line)) + "\n")

    def measure(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """Measure the probe at optimiser step `step`, record and log it; returns the logged scalars."""
        model = model if model is not None else self.trainer.model
        accelerator = getattr(self.trainer, "accelerator", None)
        if accelerator is not None:  # DDP wrapper off; a PEFT model stays wrapped (its adapter is part of pi)
            model = accelerator.unwrap_model(model)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                chosen, rejected = probe_logps(model, self.pairs, batch_size=self.batch_size,
                                               pad_token_id=self._pad_token_id())
                if self.top_tokens:
                    self._top_tokens(model, step)
            scalars = {PREFIX + key: value for key, value in self.tracker.update(step, chosen, rejected).items()}
            if self.grad_entanglement:
                scalars.update(self._entanglement(model, chosen, rejected))
        finally:
            model.train(was_training)
        self._logger.log(step, **scalars)
        self.records.append({"step": step, **scalars})
        # The base log (see the module docstring). Its on_log event clears `control.should_log`, which would cancel
        # the trainer's own log scheduled for this step, so the flag is restored.
        should_log = self.trainer.control.should_log
        transformers.Trainer.log(self.trainer, dict(scalars))
        self.trainer.control.should_log = should_log
        return scalars

    # ------------------------------------------------------------------------------------------- trainer hooks

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("metrics.jsonl", "top_tokens.jsonl", "summary.json"):
            (self.output_dir / stale).unlink(missing_ok=True)
        self._write_config()
        self._logger = MetricsLogger(self.output_dir)
        self.measure(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and state.global_step % self.every_n_steps == 0:
            self.measure(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or self._logger is None:
            return
        if self.tracker.steps[-1] != state.global_step:
            self.measure(model, state.global_step)
        self.tracker.save_tensors(self.output_dir / "displacement_probe.safetensors")
        summary = {"num_probe_pairs": len(self.pairs), "measured_steps": list(self.tracker.steps),
                   **{f"tracker/probe/{key}": value for key, value in self.tracker.summary().items()}}
        self._logger.close(save_plots=self.save_plots)
        self._logger = None
        atomic_write_json(self.output_dir / "summary.json", summary)


def track_displacement(trainer: Any, probe: Any, **options: Any) -> DisplacementCallback:
    """Build a `DisplacementCallback` for `trainer` (options: see its Args) and add it to the trainer's callbacks."""
    callback = DisplacementCallback(trainer, probe, **options)
    trainer.add_callback(callback)
    return callback
