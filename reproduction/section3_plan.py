"""Build the Section 3 (Tables 1-3) reproduction plan on SmolLM2-135M-Instruct, CPU.

    python -m reproduction.section3_plan            # rewrites reproduction/plans/section3_smollm2.json
    python -m reproduction.section3_plan --check    # exit 1 when the committed JSON differs from this builder

The plan follows the reference recipe (persona_experiments/experiments_plans/persona_paper_*.json) at CPU size:
  * DPO from the instruct model itself (the "base" start of Table 2; SmolLM2's pretrained-only base model is
    not available offline), 4 token pairs x the paper's 10 prompt seeds;
  * ONE SFT stage over all 1000 persona prompts (cross-entropy on a token drawn per prompt from
    No/Never/Maybe/Perhaps or Yes/Yeah/Sure/Certainly; batch 32, 1 epoch = 32 steps, RMSprop lr 1e-7, saved);
  * DPO (beta 0.1) and IPO (tau 0.01) from the SFT model, same pairs and seeds.
Pairs (y+ vs y-): the paper's "Yes" vs "No" (prompts answered No) and "No" vs "Never" (answered Yes), and the
close-unembedding pairs that displace on this model, "No" vs "no" and "Yes" vs "yes" (answered Yes).
CPU size: 11 steps per run (steps 0..10 cover the reference printer's points 1, 5, 10) at 10x the paper's
learning rates (DPO 1e-6, IPO 1e-7), instead of 101 steps at 1e-7 / 1e-8. 121 runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PLAN_PATH = Path(__file__).resolve().parent / "plans" / "section3_smollm2.json"
PAPER_SEEDS = [9773, 5290, 8767, 9818, 7596, 344, 2701, 3298, 7834, 6327]
OUTPUTS_DIR = "outputs/reproduction/section3"
MODEL = "smollm2-135m-instruct"
STEPS_PER_RUN = 11
# name: (answer_matching_behavior_to_use, output_tokens_matching_yes, output_tokens_matching_no).
# For prompts answered Yes, y+ comes from output_tokens_matching_yes; for prompts answered No, from ..._no.
TOKEN_PAIRS: dict[str, tuple[str, str, str]] = {
    "yes_vs_no": ("No", "No", "Yes"),            # y+ Yes, y- No (paper pair)
    "no_vs_never": ("Yes", "No", "Never"),       # y+ No, y- Never (paper pair, OLMo-1B / Gemma-2B)
    "no_vs_lower_no": ("Yes", "No", "no"),       # y+ No, y- no (close unembeddings)
    "yes_vs_lower_yes": ("Yes", "Yes", "yes"),   # y+ Yes, y- yes (close unembeddings)
}
# start name -> (objective, kl_coeff, lr, checkpoint); kl_coeff is beta for DPO, tau for IPO.
STARTS: dict[str, tuple[str, float, float, str]] = {
    "dpo_base": ("dpo", 0.1, 1e-6, ""),
    "dpo_post_sft": ("dpo", 0.1, 1e-6, "{run:sft}/model"),
    "ipo_post_sft": ("ipo", 0.01, 1e-7, "{run:sft}/model"),
}
DATASET = "data_files/persona/ends-justify-means.jsonl"


def common_fields(model: str, outputs_dir: str, dataset: str) -> dict:
    """Fields shared by every run of the plan."""
    return {"model": model, "device": "cpu", "dtype": "float32", "outputs_dir": outputs_dir, "dataset": dataset,
            "optimizer": "rmsprop", "gradient_accumulation": 1}


def sft_configuration(common: dict) -> dict:
    """The reference's single SFT stage over all prompts (shared by every post-SFT run)."""
    return {"base_config": {"experiment_name": "sft", **common, "num_train_samples": -1,
                            "answer_matching_behavior_to_use": "", "train_samples_random_seed": -1,
                            "batch_size": 32, "epochs": 1,
                            "output_tokens_matching_yes": ["No", "Never", "Maybe", "Perhaps"],
                            "output_tokens_matching_no": ["Yes", "Yeah", "Sure", "Certainly"],
                            "objective": "cross_entropy", "lr": 1e-7,
                            "log_top_token_logit_change_interval": None, "save_model": True}}


def single_prompt_configuration(pair: str, start: str, common: dict, seeds: list[int], steps: int) -> dict:
    """Single-prompt runs (one per seed) of one token pair from one start, `steps` optimizer steps each."""
    answer, matching_yes, matching_no = TOKEN_PAIRS[pair]
    objective, kl_coeff, lr, checkpoint = STARTS[start]
    base = {"experiment_name": f"{pair}_{start}_s{{train_samples_random_seed}}", **common,
            "num_train_samples": 1, "answer_matching_behavior_to_use": answer,
            "train_samples_random_seed": seeds[0], "batch_size": -1,
            "output_tokens_matching_yes": [matching_yes], "output_tokens_matching_no": [matching_no],
            "epochs": steps, "log_top_token_logit_change_interval": 5,
            "objective": objective, "kl_coeff": kl_coeff, "lr": lr}
    if checkpoint:
        base["load_model_checkpoint"] = checkpoint
    return {"base_config": base, "options": {"train_samples_random_seed": list(seeds)}}


def build_plan(model: str = MODEL, outputs_dir: str = OUTPUTS_DIR, dataset: str = DATASET,
               seeds: list[int] = PAPER_SEEDS, steps: int = STEPS_PER_RUN) -> dict:
    """The whole plan: base-model DPO first (needs no SFT, so its tables fill first), then SFT, then post-SFT.
    The defaults are the committed plan; tests build the same plan on a tiny model with fewer seeds and steps."""
    common = common_fields(model, outputs_dir, dataset)
    configurations = [single_prompt_configuration(pair, "dpo_base", common, seeds, steps) for pair in TOKEN_PAIRS]
    configurations.append(sft_configuration(common))
    configurations += [single_prompt_configuration(pair, start, common, seeds, steps)
                       for start in ("dpo_post_sft", "ipo_post_sft") for pair in TOKEN_PAIRS]
    description = " ".join((__doc__ or "").split("\n\n")[1].split())
    return {"name": "section3_smollm2", "description": description, "skip": 0, "repetitions": 1,
            "largest": False, "multiprocess": False, "num_parallel": 1, "gpu_ids_pool": [],
            "configurations": configurations}


def plan_text() -> str:
    """The plan as committed: indented JSON with a trailing newline."""
    return json.dumps(build_plan(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or check) the Section 3 reproduction plan.")
    parser.add_argument("--check", action="store_true", help="only compare the committed plan with the builder")
    args = parser.parse_args(argv)
    if args.check:
        same = PLAN_PATH.exists() and PLAN_PATH.read_text(encoding="utf-8") == plan_text()
        print(f"{PLAN_PATH}: {'up to date' if same else 'differs from reproduction/section3_plan.py'}")
        return 0 if same else 1
    PLAN_PATH.write_text(plan_text(), encoding="utf-8")
    print(f"wrote {PLAN_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
