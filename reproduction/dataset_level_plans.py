"""Build the Section 5 (Figure 2) and Section 6 (Figure 3) reproduction plans on SmolLM2-135M-Instruct, CPU.

    python -m reproduction.dataset_level_plans            # rewrites reproduction/plans/section{5,6a,6b}_smollm2.json
    python -m reproduction.dataset_level_plans --check    # exit 1 when a committed plan differs from this builder

Section 5 (`section5_smollm2.json`, preference_similarity_experiment_plan_runner.py): DPO (beta 0.1, RMSprop lr
1e-6, batch 8, 1 epoch = 4 steps) on 32-pair windows of 1000 scored UltraFeedback pairs, at quantiles
0/0.25/0.5/0.75/1 of CHES, of minus the normalised edit distance and of the last-hidden-state inner product,
3 seeds: 45 runs; 16 held-out pairs of eval_200 are tracked too. For the per-example rank correlation, 3 more
runs train on 128 pairs drawn at random (data_seed 0, 1, 2; 16 steps): each pair's preferred log-prob change
against its score under each measure.

Section 6 (sorrybench_experiment_plan_runner.py), two plans around two scripts (docs/REPRODUCTION.md lists the
commands): `section6a_smollm2.json` makes SmolLM2 refuse (cross-entropy on the gold refusal texts of 64
training prompts, RMSprop lr 5e-6, batch 8, 1 epoch, saved) and measures its refusal rate; after the preference
data set is generated from that model (reference pairing rule) and scored with CHES, `section6b_smollm2.json`
trains from it DPO, DPO + SFT term (sft_coeff 1), DPO on gold preferences (lr 1e-6) on 64 pairs, DPO on the 16
lowest length-normalised-CHES pairs, DPO on all training pairs with the reference's batch of 32 pairs, and, as a
diagnostic, the same on the refusal-refusal pairs alone (both responses refuse: the pairs whose displacement can
only move mass away from refusals) and on 16 of them, the lowest-LN-CHES ones or 16 drawn at random (batch 8), and
measures the refusal rates (temperature 0.7, 48 new tokens, keyword judge).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PLANS_DIR = Path(__file__).resolve().parent / "plans"
MODEL = "smollm2-135m-instruct"
SECTION5_OUTPUTS = "outputs/reproduction/section5"
SECTION6_OUTPUTS = "outputs/reproduction/section6"
# The similarity script writes <output_dir>/<model display>_<dataset display>/results_samples.pt.
SECTION5_SIMILARITY = f"{SECTION5_OUTPUTS}/similarity/smollm2-135m-instruct_ultrafeedback_train_1000/results_samples.pt"
SFT_MODEL = f"{SECTION6_OUTPUTS}/refusal_sft/model"
SFT_SOURCE_DATA = "data_files/sorrybench/reproduction_sft_source"
REFUSING_MODEL_DATA = "data_files/sorrybench/reproduction_refusal_sft"
SECTION6_DATASET_DISPLAY = "sorrybench_refusal_sft"  # --custom_dataset_display_name of step 3 (model display: "model")
SECTION6_SIMILARITY = f"{SECTION6_OUTPUTS}/similarity/model_{SECTION6_DATASET_DISPLAY}/results_samples.pt"
SIMILARITY_MEASURES = ["ches_scores", "minus_normalized_edit_distances", "last_hidden_embedding_inner_prods"]
QUANTILES = [0.0, 0.25, 0.5, 0.75, 1.0]
SEEDS = [0, 1, 2]
RANDOM_SUBSET_SIZE = 128
PLAN_HEADER = {"skip": 0, "repetitions": 1, "largest": False, "multiprocess": False, "num_parallel": 1,
               "gpu_ids_pool": []}


def _description(part: int) -> str:
    """Paragraph `part` of the module docstring, on one line."""
    return " ".join((__doc__ or "").split("\n\n")[part].split())


def section5_plan() -> dict:
    """Figure 2 analogue: quantile windows of three similarity measures x 3 seeds."""
    base = {"experiment_name": "uf_{pref_similarity_measure}_q{quantile}_seed{random_seed}",
            "outputs_dir": SECTION5_OUTPUTS, "model": MODEL, "dtype": "float32", "device": "cpu",
            "dataset": "data_files/ultrafeedback/train_1000.jsonl", "dataset_format": "ultrafeedback",
            "max_input_length": 128, "similarity_results_path": SECTION5_SIMILARITY,
            "pref_similarity_measure": "ches_scores", "quantile": 0.0, "preference_num_samples": 32,
            "eval_dataset": "data_files/ultrafeedback/eval_200.jsonl", "num_eval_samples": 16, "data_seed": 0,
            "objective": "dpo", "kl_coeff": 0.1, "optimizer": "rmsprop", "lr": 1e-6, "batch_size": 8,
            "gradient_accumulation": 1, "epochs": 1, "random_seed": 0}
    options = {"pref_similarity_measure": SIMILARITY_MEASURES, "quantile": QUANTILES, "random_seed": SEEDS}
    random_subset = {key: value for key, value in base.items()
                     if key not in ("similarity_results_path", "pref_similarity_measure", "quantile",
                                    "preference_num_samples")}
    random_subset.update({"experiment_name": f"uf_random{RANDOM_SUBSET_SIZE}_seed{{data_seed}}",
                          "num_train_samples": RANDOM_SUBSET_SIZE})
    return {"name": "section5_smollm2", "description": _description(2), **PLAN_HEADER,
            "configurations": [{"base_config": base, "options": options},
                               {"base_config": random_subset, "options": {"data_seed": SEEDS}}]}


def _sorrybench_base(name: str, dataset_dir: str, **fields) -> dict:
    """Fields every Section 6 run shares; `fields` override or add."""
    base = {"experiment_name": name, "outputs_dir": SECTION6_OUTPUTS, "model": MODEL, "device": "cpu",
            "dataset": f"{dataset_dir}/train.jsonl", "eval_dataset": f"{dataset_dir}/test.jsonl",
            "max_input_length": 256, "objective": "dpo", "kl_coeff": 0.1, "sft_coeff": 0.0, "optimizer": "rmsprop",
            "lr": 5e-6, "batch_size": 8, "epochs": 1, "eval_every": None, "random_seed": 0,
            "refusal_judge": "keyword", "refusal_max_new_tokens": 48, "refusal_generation_batch_size": 16,
            "refusal_temperature": 0.7}
    base.update(fields)
    return {"base_config": base}


def section6a_plan() -> dict:
    """The safety SFT stage: SmolLM2 trained to refuse; its refusal rate is the 'before' of Figure 3."""
    sft = _sorrybench_base("refusal_sft", SFT_SOURCE_DATA, objective="cross_entropy", use_gold_preferences=True,
                           num_train_samples=64, save_model=True)
    return {"name": "section6a_smollm2", "description": _description(3), **PLAN_HEADER, "configurations": [sft]}


def section6b_plan() -> dict:
    """DPO variants from the refusing model on preference data generated from it."""
    common = {"load_model_checkpoint": SFT_MODEL}
    configurations = [
        _sorrybench_base("dpo_plain", REFUSING_MODEL_DATA, num_train_samples=64, refusal_eval_before_training=True,
                         **common),
        _sorrybench_base("dpo_sft", REFUSING_MODEL_DATA, num_train_samples=64, sft_coeff=1.0, **common),
        _sorrybench_base("dpo_gold", REFUSING_MODEL_DATA, num_train_samples=64, use_gold_preferences=True, lr=1e-6,
                         **common),
        _sorrybench_base("dpo_ln_ches_lowest16", REFUSING_MODEL_DATA, similarity_results_path=SECTION6_SIMILARITY,
                         pref_similarity_measure="ln_ches_scores", preference_num_samples=16, **common),
        _sorrybench_base("dpo_plain_all_pairs", REFUSING_MODEL_DATA, batch_size=32, **common),
        _sorrybench_base("dpo_refusal_refusal_pairs", REFUSING_MODEL_DATA, batch_size=32,
                         train_pair_types=["refusal-refusal"], **common),
        _sorrybench_base("dpo_refusal_refusal_ln_ches_lowest16", REFUSING_MODEL_DATA,
                         train_pair_types=["refusal-refusal"], similarity_results_path=SECTION6_SIMILARITY,
                         pref_similarity_measure="ln_ches_scores", preference_num_samples=16, **common),
        _sorrybench_base("dpo_refusal_refusal_random16", REFUSING_MODEL_DATA, train_pair_types=["refusal-refusal"],
                         num_train_samples=16, **common),
    ]
    return {"name": "section6b_smollm2", "description": _description(3), **PLAN_HEADER,
            "configurations": configurations}


PLANS = {"section5_smollm2.json": section5_plan, "section6a_smollm2.json": section6a_plan,
         "section6b_smollm2.json": section6b_plan}


def plan_text(build) -> str:
    """A plan as committed: indented JSON with a trailing newline."""
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or check) the Section 5 and 6 reproduction plans.")
    parser.add_argument("--check", action="store_true", help="only compare the committed plans with the builder")
    args = parser.parse_args(argv)
    differing = []
    for name, build in PLANS.items():
        path = PLANS_DIR / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != plan_text(build):
                differing.append(str(path))
        else:
            path.write_text(plan_text(build), encoding="utf-8")
            print(f"wrote {path}")
    for path in differing:
        print(f"{path}: differs from reproduction/dataset_level_plans.py")
    return 1 if differing else 0


if __name__ == "__main__":
    raise SystemExit(main())
