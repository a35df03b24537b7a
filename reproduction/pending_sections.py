"""Sections 5 and 6 of docs/REPRODUCTION.md (pipelines, commands, expected resources, run counts) and the
paper-scale plans of every section. These sections hold no numbers until their runs exist; the generator counts
the finished runs it finds (status.json with status "done") and says "not run yet" when there are none.
"""

from __future__ import annotations

import json
from pathlib import Path

from reproduction.dataset_level_plans import (REFUSING_MODEL_DATA, SECTION5_OUTPUTS, SECTION5_SIMILARITY,
                                              SECTION6_DATASET_DISPLAY, SECTION6_OUTPUTS, SECTION6_SIMILARITY,
                                              SFT_MODEL, SFT_SOURCE_DATA)

ENV = "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 LD_DATA_DIR=/path/to/data"
SECTION5_COMMANDS = f"""# 1. score 1000 UltraFeedback pairs: CHES, LN-CHES, -edit distance, last-hidden inner product
{ENV} python compute_preference_similarity_per_example.py --model smollm2-135m-instruct \\
    --dataset data_files/ultrafeedback/train_1000.jsonl --dataset_format ultrafeedback \\
    --max_input_length 128 --device cpu --output_dir {Path(SECTION5_SIMILARITY).parents[1]}
#    (writes {SECTION5_SIMILARITY}; the plan reads that path)
# 2. 45 DPO runs on 32-pair quantile windows (3 measures x 5 quantiles x 3 seeds) + 3 random 128-pair runs
{ENV} nohup python preference_similarity_experiment_plan_runner.py \\
    --plan_config_path reproduction/plans/section5_smollm2.json > section5.log 2>&1 &
# 3. Figure 2 analogue and per-example correlations into this report (the printer alone: the windows only)
python -m reproduction.make_report --section5_dir {SECTION5_OUTPUTS}
python preference_similarity_results_printer.py --outputs_dir {SECTION5_OUTPUTS}"""
SECTION6_COMMANDS = f"""# 0. SFT source: SORRY-Bench train/test split, generic gold refusals (4-token responses, unused)
{ENV} python sorrybench_create_preferences_dataset.py --model smollm2-135m-instruct \\
    --max_output_length 4 --batch_size 16 --device cpu --gold_preferences generic --output_dir {SFT_SOURCE_DATA}
# 1. safety SFT (cross-entropy on gold refusals of 64 training prompts) + its refusal rates (train / test)
{ENV} python sorrybench_experiment_plan_runner.py --plan_config_path reproduction/plans/section6a_smollm2.json
# 2. preference data from the refusing model, reference pairing rule (2 responses of 48 tokens, keyword judge,
#    a refusal preferred when the scores differ, ties at random), generic gold preferences, 85/15 split
{ENV} python sorrybench_create_preferences_dataset.py --model {SFT_MODEL} \\
    --max_output_length 48 --batch_size 16 --device cpu --gold_preferences generic --output_dir {REFUSING_MODEL_DATA}
# 3. length-normalised CHES of its training pairs, on the refusing model
{ENV} python compute_preference_similarity_per_example.py --model {SFT_MODEL} \\
    --dataset {REFUSING_MODEL_DATA}/train.jsonl --dataset_format sorrybench_prefs --max_input_length 256 \\
    --custom_dataset_display_name {SECTION6_DATASET_DISPLAY} --device cpu \\
    --output_dir {Path(SECTION6_SIMILARITY).parents[1]}
# 4. DPO, DPO + SFT term, gold preferences (64 pairs each), the 16 lowest LN-CHES pairs, all pairs (batch 32),
#    the refusal-refusal pairs alone (batch 32) and 16 of them (lowest LN-CHES / random), from the refusing
#    model; refusal rates before (dpo_plain) and after (temperature 0.7, 48 new tokens, keyword judge)
{ENV} nohup python sorrybench_experiment_plan_runner.py \\
    --plan_config_path reproduction/plans/section6b_smollm2.json > section6.log 2>&1 &
# 5. refusal rates with 95% intervals into this report
python -m reproduction.make_report --section6_dir {SECTION6_OUTPUTS}"""
PAPER_SCALE = {
    3: ["`persona_experiments/experiments_plans/persona_paper_olmo1b.json`, `persona_paper_gemma2b.json`, "
        "`persona_paper_llama3_8b.json` (61 runs each: one SFT over the 1000 prompts, DPO from the base model, DPO "
        "and IPO after SFT, two pairs, ten seeds, 101 steps, fp32; Hub models). One GPU per model; Llama-3-8B in "
        "fp32 with RMSprop state needs about 96 GB (an H200-class GPU). Same runner and the same generator "
        "(`--section3_dir` is the plan's `outputs_dir`; the pair/start grouping reads the configs)."],
    5: ["`preference_similarity/experiments_plans/paper_olmo1b_gemma2b_llama3_8b.json`: 5000 UltraFeedback-"
        "binarized pairs scored per model (`--dataset HuggingFaceH4/ultrafeedback_binarized --split train_prefs "
        "--num_samples 5000 --max_input_length 512`), 512-pair windows at quantiles 0…1 of CHES and edit distance, "
        "3 seeds; GPUs and Hub access, Llama-3-8B in fp32 through FSDP over several GPUs (docs/dataset_level.md)."],
    6: ["`sorrybench/experiments_plans/gemma2b_it_paper.json` and `llama3_8b_instruct_paper.json`: data from "
        "`sorrybench_create_preferences_dataset.py --model google/gemma-2b-it` (or the Llama default) with the "
        "official judge, `--use_rm` (PairRM) and the human gold preferences (gated); 512-token responses; DPO/IPO "
        "plain, +SFT, gold, 19 lowest LN-CHES pairs; fp32. These instruct models already refuse, so the safety "
        "SFT step (1 above) is not needed there. Llama-3-8B: about 96 GB (H200-class GPU or multi-GPU)."],
}


def count_finished_runs(outputs_dir: Path) -> int:
    """Run directories under `outputs_dir` whose status.json says "done" (0 when the directory is missing)."""
    outputs_dir = Path(outputs_dir)
    if not outputs_dir.is_dir():
        return 0
    done = 0
    for status_file in outputs_dir.rglob("status.json"):
        try:
            done += json.loads(status_file.read_text(encoding="utf-8")).get("status") == "done"
        except (json.JSONDecodeError, OSError, AttributeError):
            continue
    return done


def paper_scale_lines(section: int) -> list[str]:
    """The 'paper scale' paragraph of a section."""
    return ["**Paper scale** (GPU, Hub models; the identical pipeline):", "", *(f"- {line}" for line in
                                                                              PAPER_SCALE[section]), ""]


def _status_line(outputs_dir: Path, num_runs: int, planned: int, summarised: bool = False) -> str:
    if num_runs == 0:
        return (f"**Not run yet**: 0 of {planned} planned runs found under `{outputs_dir}`; the commands below make "
                "them (resumable), then the last one regenerates this section.")
    state = "complete" if num_runs >= planned else "partial"
    if summarised:
        return f"**Runs found: {num_runs} of {planned}** under `{outputs_dir}` ({state})."
    return (f"**Runs found: {num_runs} of {planned}** under `{outputs_dir}` ({state}); this generator does not "
            "summarise them yet: use the results printer of the last step below.")


def section5_markdown(outputs_dir: Path, num_runs: int, result_lines: list[str] | None = None) -> list[str]:
    """Section 5: status, the results when runs exist (`result_lines`), what it measures, commands, resources."""
    return ["## Section 5: CHES vs other similarity measures (Figure 2 analogue)", "",
            _status_line(outputs_dir, num_runs, 48, summarised=result_lines is not None), "",
            *(result_lines or []),
            "What it measures: the preferred log-prob change after DPO on 32-pair subsets taken at quantiles "
            "0, 0.25, 0.5, 0.75, 1 of CHES, of minus the normalised edit distance and of the last-hidden-state "
            "inner product, 3 seeds each (the paper: the more similar by CHES, the larger the decrease, while the "
            "other measures order the subsets less clearly). Plan: `reproduction/plans/section5_smollm2.json` "
            "plus 3 random-subset runs (`python -m reproduction.dataset_level_plans` writes it).", "",
            "```bash", SECTION5_COMMANDS, "```", "",
            "Expected resources (2 shared CPU cores, OMP_NUM_THREADS=1): scoring about 10–15 min, the 45 runs "
            "about 1–1.5 h (the 30-run plan of the same shape was sized at about an hour), the 3 random-subset runs "
            "(16 steps each) about 15 min more; about 4 GB of memory (bench/RESULTS.md: 4.2 GiB peak for a "
            "dataset-level SmolLM2 run of 8 pairs x 256 tokens).",
            "",
            "Per-example rank correlation: the plan's 3 random-subset runs (128 pairs each, no filter) give each "
            "pair's preferred log-prob change (`displacement_train.safetensors`); the generator matches them to "
            "the similarity file by dataset row and reports Spearman's rho per measure "
            "(`reproduction/section5_report.py`).", "",
            *paper_scale_lines(5)]


def section6_markdown(outputs_dir: Path, num_runs: int, result_lines: list[str] | None = None) -> list[str]:
    """Section 6: status, the results when runs exist (`result_lines`), the pipeline, commands, resources."""
    return ["## Section 6: unintentional unalignment on SORRY-Bench (Figure 3 analogue)", "",
            _status_line(outputs_dir, num_runs, 9, summarised=result_lines is not None), "",
            *(result_lines or []),
            "SmolLM2-135M-Instruct hardly refuses (3 of 192 sampled responses, docs/sorrybench.md), so the "
            "pipeline first makes a refusing model with an SFT stage on the gold refusal texts "
            "(`data_files/sorrybench/gold_refusals.txt`), then follows the paper: refusal rate of that model, "
            "preference data generated from it by the reference pairing rule, DPO / DPO + SFT / gold / "
            "LN-CHES-filtered (plus diagnostics: every training pair and the refusal-refusal pairs "
            "alone with the reference's batch of 32, and 16 refusal-refusal pairs, lowest-LN-CHES or random), refusal rates before and after (the paper's shape: DPO drops the rate, 74.4% → "
            "33.4% for Llama-3-8B-Instruct, and CHES filtering keeps it). Plans: "
            "`reproduction/plans/section6a_smollm2.json` (SFT) and `section6b_smollm2.json` (DPO variants).", "",
            "Differences from the paper, for an offline CPU run: a 135M model made to refuse by SFT (the paper's "
            "instruct models refuse already); responses of 48 tokens instead of 512; the keyword judge instead of "
            "the official SORRY-Bench judge, and ties between equally judged responses at random instead of by "
            "PairRM (`--use_rm`; both need the Hub); DPO, DPO + SFT and gold on 64-pair subsets with batch 8 (the "
            "reference recipe, every pair with batch 32, is the `dpo_plain_all_pairs` run); the 16 lowest LN-CHES "
            "pairs (4% of the training pairs) instead of 19 (5%); one seed per run.", "",
            "```bash", SECTION6_COMMANDS, "```", "",
            "Resources, measured on 2 CPU cores shared with another job (OMP_NUM_THREADS=1): step 0 3.0 min, "
            "step 1 5.3 min (8 SFT steps 1.4 min, refusal evaluation of 450 prompts about 4 min), step 2 8.0 min, "
            "step 3 1.7 min, step 4 62 min (the 64-pair and 16-pair runs 4.4–5.6 min each, dpo_plain 10.2 min with "
            "its evaluation before training, all pairs 15.9 min, the refusal-refusal pairs 8.3 min; a refusal "
            "evaluation of 450 prompts takes 4–5 min of each); about 80 min in all; peak resident memory 3.5 GB. The "
            "refusal rate after "
            "training is 1 − mean judge score over one sampled response per prompt; responses the judge cannot "
            "score (unknown) are left out of the mean and counted apart (`num_unknown`).", "",
            *paper_scale_lines(6)]
