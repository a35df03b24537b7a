"""Train with TRL's DPOTrainer and watch likelihood displacement on a probe set (offline, CPU is enough).

    python -m examples.trl_dpo_with_displacement_tracking                      # tiny-gpt2, a few seconds
    python -m examples.trl_dpo_with_displacement_tracking --model smollm2-135m-instruct --max_steps 20 \
        --every_n_steps 5 --learning_rate 1e-6 --output_dir outputs/trl_dpo_smollm2

In:  the first `--num_pairs` rows of the UltraFeedback sample (`data_files/ultrafeedback/train_1000.jsonl`, found
     through `common.data_locations`; TRL's standard prompt/chosen/rejected format) or `--dataset` (a local
     .json/.jsonl file in any TRL preference format).
Out: TRL's own `--output_dir`, and `<output_dir>/displacement/` in the toolkit's run layout (`config.json`,
     `metrics.jsonl`, `summary.json`, `displacement_probe.safetensors`, `plots/`); the displacement table is printed.

The reference model: `--reference precompute` (default) uses `precompute_ref_log_probs=True` (the reference
log-probs are computed once in `DPOTrainer.__init__`, no second model in memory); `--reference model` passes a
second, independent load of the same model as `ref_model` (our built-in models have no Hub id TRL could reload
them from, so TRL's default of re-loading `model.config._name_or_path` fails for `tiny-gpt2` / `tiny-llama`);
`--use_lora` trains a LoRA adapter and TRL uses the model with the adapter disabled as the reference.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_DATA = "data_files/ultrafeedback/train_1000.jsonl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-gpt2", help="built-in name, local directory or Hub id")
    parser.add_argument("--dataset", default=DEFAULT_DATA, help=f"local preference file. Default {DEFAULT_DATA}")
    parser.add_argument("--num_pairs", type=int, default=16, help="training pairs (first rows). Default 16")
    parser.add_argument("--probe_pairs", type=int, default=8, help="probe = first this many training rows. Default 8")
    parser.add_argument("--max_steps", type=int, default=4, help="optimiser steps. Default 4")
    parser.add_argument("--every_n_steps", type=int, default=1, help="probe measurement interval. Default 1")
    parser.add_argument("--batch_size", type=int, default=4, help="per-device train batch size. Default 4")
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="Default 1e-4 (tiny random model)")
    parser.add_argument("--beta", type=float, default=0.1, help="DPO beta. Default 0.1")
    parser.add_argument("--max_length", type=int, default=128, help="tokens per prompt + response. Default 128")
    parser.add_argument("--reference", choices=("precompute", "model"), default="precompute")
    parser.add_argument("--use_lora", action="store_true", help="train a LoRA adapter (rank 8)")
    parser.add_argument("--grad_entanglement", action="store_true", help="also log gradient entanglement")
    parser.add_argument("--top_tokens", type=int, default=0, help="record the k tokens that gained most. Default 0")
    parser.add_argument("--output_dir", default="outputs/trl_dpo_with_displacement_tracking")
    args = parser.parse_args(argv)
    for name in ("num_pairs", "probe_pairs", "max_steps", "every_n_steps", "batch_size", "max_length"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.probe_pairs > args.num_pairs:
        parser.error(f"--probe_pairs ({args.probe_pairs}) must not exceed --num_pairs ({args.num_pairs})")
    return args


def load_pairs(path: str, num_pairs: int):
    """The first `num_pairs` rows of a local preference file as a `datasets.Dataset` (TRL's formats)."""
    from datasets import Dataset

    from common.data_locations import locate_data_file

    dataset = Dataset.from_json(str(locate_data_file(path)))
    if len(dataset) < num_pairs:
        raise ValueError(f"{path}: {len(dataset)} rows, fewer than --num_pairs {num_pairs}")
    return dataset.select(range(num_pairs))


def main(argv: list[str] | None = None) -> Path:
    """Train, print the displacement table; returns the displacement run directory."""
    args = parse_args(argv)
    import torch
    from trl import DPOConfig, DPOTrainer

    from common.models import load_model_and_tokenizer
    from integrations import format_displacement_table, track_displacement

    train = load_pairs(args.dataset, args.num_pairs)
    model, tokenizer = load_model_and_tokenizer(args.model, use_lora=args.use_lora)
    ref_model = None
    if args.reference == "model" and not args.use_lora:
        ref_model, _ = load_model_and_tokenizer(args.model)  # an independent copy of the initial weights
    config = DPOConfig(
        output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, beta=args.beta, max_length=args.max_length, logging_steps=1,
        precompute_ref_log_probs=args.reference == "precompute" and not args.use_lora, report_to="none",
        save_strategy="no", use_cpu=not torch.cuda.is_available(), disable_tqdm=True, seed=0)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=config, train_dataset=train,
                         processing_class=tokenizer)
    callback = track_displacement(trainer, list(range(args.probe_pairs)), every_n_steps=args.every_n_steps,
                                  grad_entanglement=args.grad_entanglement, top_tokens=args.top_tokens)
    trainer.train()
    print(format_displacement_table(callback.records))
    print(f"displacement run directory: {callback.output_dir}")
    return callback.output_dir


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
