"""Benchmark (issue 7, item 1): one dataset-level DPO step, our trainer vs TRL's `DPOTrainer`, time and peak memory.

    python bench/bench_dpo_step.py            # 3 steps per process, 3 interleaved rounds (the issue's setting)
    python bench/bench_dpo_step.py --quick    # 2 steps, 1 round (a smoke run)

Setting: `smollm2-135m-instruct` (fp32, CPU), `--num_pairs` 8 UltraFeedback pairs (seeded draw from
`--dataset`) tokenized once with `common.preference_data.tokenize_pair` and truncated to `--max_length` 256 tokens,
one optimizer step per batch of all 8 pairs (batch 8), DPO with beta 0.1, learning rate 1e-6, Adam-type optimizer
on both sides (ours `adam`, TRL its default AdamW), so optimizer state has the same size.

Sides, each in its own subprocess so its peak RSS is its own:
    ours          `preference_training.trainer.train_preference_model` (reference log-probs precomputed once before
                  training, no reference model in memory, padding-free pair-at-a-time forward/backward, log-probs only
                  at response positions). Its reference pass is timed separately (setup, not a step).
    trl           TRL `DPOTrainer` with an in-memory copy of the model as `ref_model`, `use_cpu=True`, no reporting,
                  `bf16=False`, `gradient_checkpointing=False` (the same fp32 arithmetic as ours).
    trl_defaults  the same with TRL's own defaults for `bf16` (True) and `gradient_checkpointing` (True).
    trl_precompute  TRL as a user who wants speed would set it up (issue 17): `precompute_ref_log_probs=True` (no
                  reference model in memory; its pass is timed separately, like ours), `padding_free=True` (TRL 1.16
                  accepts it but switches it off with a warning; the report records what was in effect), fp32, no
                  gradient checkpointing. TRL 1.16 has no `use_logits_to_keep`: its fused LM head already projects
                  only the completion positions.
    ours_compiled, trl_precompute_compiled  `ours` and `trl_precompute` with `torch_compile=True` (ours: the
                  elementwise blocks, `common/compiled_blocks.py`; TRL/transformers: `torch.compile` of the whole
                  model). Their first step compiles: it is reported on its own and left out of the step medians.
TRL gets exactly the token ids ours trains on: its trainer is built on the text pairs, then its `train_dataset`
is replaced by the pre-tokenized `prompt_ids`/`chosen_ids`/`rejected_ids` (its own tokenization truncates
differently). With `precompute_ref_log_probs`, TRL computed the reference log-probs of its own tokenization in
`__init__`, so they are computed again (`_precompute_ref_logps`) for the swapped-in ids.
Step time: ours from one logged step to the next (everything in the loop: forward, backward,
optimizer, logging); TRL from its `on_step_begin` to its `on_step_end` callback (forward, backward, clipping,
optimizer; data loading and logging excluded, which favours TRL slightly). Setup (model loading, tokenization,
our reference pass) is excluded. Both wall seconds and process CPU seconds are recorded (with one thread, CPU
seconds measure the work and do not depend on other jobs on a shared machine). Medians over all steps of all
rounds; the rounds alternate the side order. `trl_defaults` runs `--defaults_steps` steps in the first
`--defaults_rounds` rounds only (bf16 autocast is very slow on CPUs without native bf16).
The results are printed and written to the `dpo_step` section of bench/RESULTS.md.

    python bench/bench_dpo_step.py --flop_floor   # matmul GFLOP/s of this CPU and the step's FLOP floor (seconds)

writes the `flop_floor` section: the FLOPs one step of ours must do at least (`step_flops`) divided by the best
fp32 matmul rate one thread reaches here (`matmul_flops_per_second`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_common import (  # noqa: E402
    THREADS_HELP, gib, interleaved, run_worker, sync_ches_section, update_results_section, worker_main,
)
from bench.dpo_step_report import flop_floor_report, report  # noqa: E402

SIDES = ("ours", "trl", "trl_defaults", "trl_precompute", "ours_compiled", "trl_precompute_compiled")
# Prompts cut from the left so every pair of the draw keeps its response (the setting all earlier rows measured);
# the paper truncation would drop the pairs whose prompts exceed max_length.
TRUNCATION = "keep_response"


def load_tokenized_pairs(tokenizer, dataset: str, num_pairs: int, seed: int, max_length: int):
    """The `num_pairs` examples drawn with `seed` and their TokenizedPairs; fails if any pair is unusable."""
    from common.preference_data import TokenizationOptions, load_preference_examples, tokenize_pair

    examples = load_preference_examples(dataset, "ultrafeedback", num_samples=num_pairs, seed=seed)
    options = TokenizationOptions(truncation=TRUNCATION)
    pairs = [tokenize_pair(tokenizer, example, max_length, options) for example in examples]
    skipped = [(e.source_index, p) for e, p in zip(examples, pairs) if isinstance(p, str)]
    if skipped:
        raise ValueError(f"{dataset}: pairs {skipped} of the seed-{seed} draw are unusable; pick another --seed")
    return examples, pairs


def token_counts(pairs) -> dict[str, int]:
    """Tokens of the 2B sequences (prompt + response), and of the padded (2B, longest) batch TRL builds."""
    lengths = [len(p.prompt_ids) + len(r) for p in pairs for r in (p.chosen_ids, p.rejected_ids)]
    return {"real_tokens": sum(lengths), "padded_tokens": len(lengths) * max(lengths),
            "response_tokens": sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)}


class _TimingLogger:
    """A metrics sink that timestamps every `log` call (wall and process CPU seconds)."""

    def __init__(self):
        self.records: list[tuple[float, float, dict]] = []

    def log(self, step: int, **scalars) -> None:
        self.records.append((time.perf_counter(), time.process_time(), scalars))


def ours_worker(model: str, dataset: str, num_pairs: int, seed: int, max_length: int, steps: int,
                lr: float, beta: float, optimizer: str, torch_compile: bool = False) -> dict:
    """Train `steps` steps with our trainer; step times are the gaps between consecutive logged records. With
    `torch_compile` the first step compiles and is marked as the warm-up (`warmup_steps`)."""
    import torch

    from common.config import RunContext
    from preference_training.trainer import train_preference_model
    from preference_training.config import PreferenceTrainingConfig

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_ours_") as tmp:
        config = PreferenceTrainingConfig(
            model=model, dataset=dataset, max_input_length=max_length, truncation=TRUNCATION, batch_size=num_pairs,
            epochs=steps,
            eval_every=None, num_eval_samples=0, optimizer=optimizer, lr=lr, kl_coeff=beta, objective="dpo",
            reference_cache_dir="", outputs_dir=tmp, device="cpu", torch_compile=torch_compile)
        problems = config.validate()
        if problems:
            raise ValueError(f"benchmark config invalid: {problems}")
        from common.preference_data import load_preference_examples

        examples = load_preference_examples(dataset, "ultrafeedback", num_samples=num_pairs, seed=seed)
        logger = _TimingLogger()
        ctx = RunContext(run_dir=Path(tmp), device=torch.device("cpu"), logger=logger, seed=seed)
        result = train_preference_model(config, examples, [], ctx)
    step_seconds, step_cpu_seconds, step_records = [], [], []
    for (wall_before, cpu_before, _), (wall, cpu, scalars) in zip(logger.records, logger.records[1:]):
        if "lr" in scalars:  # a training step's record (evaluation records carry no lr)
            step_seconds.append(wall - wall_before)
            step_cpu_seconds.append(cpu - cpu_before)
            step_records.append(scalars)
    if result.summary["num_train_pairs"] != num_pairs:
        raise ValueError(f"our trainer kept {result.summary['num_train_pairs']} of {num_pairs} pairs")
    return {"step_seconds": step_seconds, "step_cpu_seconds": step_cpu_seconds, "setup_seconds": logger.records[0][0] - started,
            "reference_seconds": ctx.timings["reference_seconds"],
            "first_loss": step_records[0]["loss"], "first_logps_chosen": step_records[0]["logps/chosen"],
            "first_logps_rejected": step_records[0]["logps/rejected"], "warmup_steps": int(torch_compile)}


def _model_location(model: str) -> str:
    """Directory or Hub id that `from_pretrained` reads for `model` (built-in SmolLM2: its converted directory)."""
    from common.models import SMOLLM2, smollm2_dir

    return str(smollm2_dir()) if model == SMOLLM2 else model


def trl_worker(model: str, dataset: str, num_pairs: int, seed: int, max_length: int, steps: int,
               lr: float, beta: float, variant: str) -> dict:
    """Train `steps` steps with TRL's DPOTrainer; time its steps by callback.

    `variant`: "copy" (an in-memory reference copy, fp32, no checkpointing), "defaults" (the same with TRL's bf16 and
    gradient-checkpointing defaults), "precompute" (precomputed reference log-probs, padding_free requested) or
    "precompute_compiled" (the same with `torch_compile=True`; its first step compiles: `warmup_steps` 1)."""
    import copy

    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begins, self.ends = [], []  # (wall, process CPU) seconds

        def on_step_begin(self, args, state, control, **kwargs):
            self.begins.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append((time.perf_counter(), time.process_time()))

    location = _model_location(model)
    tokenizer = AutoTokenizer.from_pretrained(location)
    examples, pairs = load_tokenized_pairs(tokenizer, dataset, num_pairs, seed, max_length)
    policy = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
    precompute = variant.startswith("precompute")
    reference = None if precompute else copy.deepcopy(policy)
    text_rows = [{"prompt": [{"role": "user", "content": e.prompt}],
                  "chosen": [{"role": "assistant", "content": e.chosen}],
                  "rejected": [{"role": "assistant", "content": e.rejected}]} for e in examples]
    options = dict(output_dir=tempfile.mkdtemp(prefix="bench_trl_"), use_cpu=True, report_to=[],
                   per_device_train_batch_size=num_pairs, max_steps=steps, logging_steps=1, save_strategy="no",
                   learning_rate=lr, beta=beta, max_length=max_length, seed=seed, dataloader_num_workers=0)
    if variant != "defaults":
        options.update(bf16=False, gradient_checkpointing=False)
    if precompute:
        options.update(precompute_ref_log_probs=True, padding_free=True, torch_compile=variant == "precompute_compiled")
    timer = StepTimer()
    trainer = DPOTrainer(model=policy, ref_model=reference, args=DPOConfig(**options), processing_class=tokenizer,
                         train_dataset=datasets.Dataset.from_list(text_rows), callbacks=[timer])
    shared_ids = datasets.Dataset.from_list(
        [{"prompt_ids": p.prompt_ids, "chosen_ids": p.chosen_ids, "rejected_ids": p.rejected_ids} for p in pairs])
    reference_seconds = math.nan
    if precompute:  # TRL's __init__ precomputed its own tokenization's: redo it for the shared ids
        started = time.perf_counter()
        shared_ids = trainer._precompute_ref_logps(shared_ids, "train", num_pairs)
        reference_seconds = time.perf_counter() - started
    trainer.train_dataset = shared_ids
    trainer.train()
    first = next(record for record in trainer.state.log_history if "loss" in record)
    return {"step_seconds": [end[0] - begin[0] for begin, end in zip(timer.begins, timer.ends)],
            "step_cpu_seconds": [end[1] - begin[1] for begin, end in zip(timer.begins, timer.ends)],
            "first_loss": first["loss"], "first_logps_chosen": first.get("logps/chosen", math.nan),
            "first_logps_rejected": first.get("logps/rejected", math.nan),
            "optimizer": type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                              else trainer.optimizer).__name__,
            "bf16": trainer.args.bf16, "gradient_checkpointing": trainer.args.gradient_checkpointing,
            "padding_free": bool(trainer.padding_free), "reference_seconds": reference_seconds,
            "torch_compile": trainer.args.torch_compile, "warmup_steps": int(trainer.args.torch_compile)}


WORKERS = {"ours": ours_worker, "trl": lambda **kw: trl_worker(variant="copy", **kw),
           "trl_defaults": lambda **kw: trl_worker(variant="defaults", **kw),
           "trl_precompute": lambda **kw: trl_worker(variant="precompute", **kw),
           "ours_compiled": lambda **kw: ours_worker(torch_compile=True, **kw),
           "trl_precompute_compiled": lambda **kw: trl_worker(variant="precompute_compiled", **kw)}


def model_bytes(model: str) -> int:
    """Parameters x 4 bytes (fp32) of `model`, counted without loading the weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(_model_location(model))
    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in net.parameters()) * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dataset", default="data_files/ultrafeedback/train_1000.jsonl",
                        help="found through common.data_locations (e.g. $LD_DATA_DIR/ultrafeedback/train_1000.jsonl)")
    parser.add_argument("--num_pairs", type=int, default=8, help="pairs drawn (= the batch: one step per batch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_length", type=int, default=256, help="tokens per prompt + response")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per process")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (one process per side each)")
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    parser.add_argument("--defaults_steps", type=int, default=1,
                        help="steps of the trl_defaults side (bf16 autocast without native bf16 support is very slow "
                             "on CPUs without AVX512-BF16/AMX: 23 min per step on the machine of RESULTS.md)")
    parser.add_argument("--defaults_rounds", type=int, default=1, help="rounds that include the trl_defaults side")
    parser.add_argument("--raw_path", default=None,
                        help="also append every process's raw result as a JSON line to this file (kept if the "
                             "benchmark is interrupted)")
    parser.add_argument("--from_raw", nargs="+", default=None, metavar="RAW_JSONL",
                        help="run nothing: build the report from the raw records of earlier runs (--raw_path files), "
                             "e.g. to add a separately run trl_defaults side")
    parser.add_argument("--lr", type=float, default=1e-6, help="TRL's default learning rate")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--optimizer", default="adam", help="ours (TRL uses AdamW: same state size as adam)")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--quick", action="store_true", help="2 steps, 1 round")
    parser.add_argument("--no_write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    parser.add_argument("--flop_floor", action="store_true",
                        help="run nothing else: measure this CPU's matmul rate and write the step's FLOP floor")
    args = parser.parse_args()
    from common.data_locations import locate_data_file

    args.dataset = str(locate_data_file(args.dataset))
    if args.flop_floor:
        text = flop_floor_report(args)
        print(text)
        if not args.no_write:
            update_results_section("flop_floor", text)
        return
    if args.quick:
        args.steps, args.rounds, args.defaults_steps = 2, 1, 1
    common = dict(model=args.model, dataset=args.dataset, num_pairs=args.num_pairs, seed=args.seed,
                  max_length=args.max_length, steps=args.steps, lr=args.lr, beta=args.beta)
    kwargs = {"ours": {**common, "optimizer": args.optimizer}, "trl": common,
              "trl_defaults": {**common, "steps": args.defaults_steps}, "trl_precompute": common,
              "ours_compiled": {**common, "optimizer": args.optimizer}, "trl_precompute_compiled": common}
    results: dict[str, list[dict]] = {side: [] for side in args.sides}
    for raw_path in args.from_raw or []:
        for line in Path(raw_path).read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record["kwargs"]["num_pairs"] != args.num_pairs or record["kwargs"]["seed"] != args.seed:
                raise ValueError(f"{raw_path}: a record of num_pairs/seed {record['kwargs']['num_pairs']}/"
                                 f"{record['kwargs']['seed']}, expected {args.num_pairs}/{args.seed}")
            results.setdefault(record["side"], []).append(record)
    results = {side: runs for side, runs in results.items() if runs} if args.from_raw else results
    for round_index in range(0 if args.from_raw else args.rounds):
        for side in interleaved(args.sides, round_index):
            if side == "trl_defaults" and round_index >= args.defaults_rounds:
                continue
            started = time.perf_counter()
            results[side].append(run_worker(Path(__file__), side, kwargs[side], args.threads))
            if args.raw_path:
                with open(args.raw_path, "a", encoding="utf-8") as raw:
                    raw.write(json.dumps({"side": side, "round": round_index, "kwargs": kwargs[side], "argv": sys.argv,
                                          **results[side][-1]}) + "\n")
            print(f"round {round_index}: {side} steps {[round(s, 1) for s in results[side][-1]['step_seconds']]} s, "
                  f"peak RSS {gib(results[side][-1]['peak_rss_bytes'])} GiB, process {time.perf_counter() - started:.0f} s",
                  flush=True)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_model_location(args.model))
    counts = token_counts(load_tokenized_pairs(tokenizer, args.dataset, args.num_pairs, args.seed, args.max_length)[1])
    text = report(args, results, counts, model_bytes(args.model))
    print(text)
    if not args.no_write:
        update_results_section("dpo_step", text)
        sync_ches_section()


if __name__ == "__main__":
    worker_main(WORKERS) or main()
