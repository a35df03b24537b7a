"""The markdown sections of `bench/bench_dpo_step.py`: the step table with its ratios, and the FLOP floor.

Rules: a side's step times are its steps after `warmup_steps` (the torch_compile sides leave out their first
step, which compiles; the first step is reported on its own line); ratios are medians over all processes and
steps of a side; each comparison has its own (step time, peak RSS) targets in `COMPARISONS`.
"""

from __future__ import annotations

import sys

from bench.bench_common import gib, machine_lines, markdown_table, median, spread

# (ours, competitor, (step-time target, peak-RSS target)): issue 7 against TRL as configured by default in fp32,
# issue 17 against TRL with precomputed reference log-probs; torch_compile against the same with TRL's torch_compile
COMPARISONS = (
    ("ours", "trl", (0.4, 0.6)), ("ours", "trl_defaults", (0.4, 0.6)), ("ours", "trl_precompute", (0.45, 0.35)),
    ("ours_compiled", "trl_precompute", (0.45, 0.35)),
    ("ours_compiled", "trl_precompute_compiled", (0.45, 0.35)),
)


def steady(record: dict, key: str) -> list[float]:
    """The step times `key` of one process's record after its warm-up steps."""
    return record[key][record.get("warmup_steps", 0):]


def report(args, results: dict[str, list[dict]], counts: dict[str, int], bytes_of_model: int) -> str:
    """The markdown section: setting, per-side table, ratios vs targets, sanity check of the first-step loss."""
    steps = {side: [s for r in runs for s in steady(r, "step_seconds")] for side, runs in results.items()}
    cpu = {side: [s for r in runs for s in steady(r, "step_cpu_seconds")] for side, runs in results.items()}
    peaks = {side: [r["peak_rss_bytes"] for r in runs] for side, runs in results.items()}
    rows = []
    for side, runs in results.items():
        rows.append([side, spread(steps[side], 1), spread(cpu[side], 1), f"{gib(median(peaks[side]))} ({', '.join(gib(p) for p in peaks[side])})",
                     f"{median(peaks[side]) / bytes_of_model:.1f}x", gib(median([r['rss_after_imports_bytes'] for r in runs])),
                     f"{median([r['first_loss'] for r in runs]):.4f}", f"{median([r['first_logps_chosen'] for r in runs]):.2f}"])
    lines = ["## 1. Dataset-level DPO step: ours vs TRL DPOTrainer (`bench/bench_dpo_step.py`)", ""]
    lines += machine_lines(sys.argv, args.threads)
    producers = sorted({" ".join(r["argv"]) for runs in results.values() for r in runs if "argv" in r})
    lines += [f"- measured by: {', '.join(f'`python {argv}`' for argv in producers)}"] if producers else []
    lines += [f"- setting: {args.model} fp32 on CPU, {args.num_pairs} UltraFeedback pairs ({args.dataset}, seed "
              f"{args.seed}) truncated to {args.max_length} tokens, batch {args.num_pairs}, DPO beta {args.beta}, lr "
              f"{args.lr}; ours optimizer `{args.optimizer}`, TRL its default ({results.get('trl', [{}])[0].get('optimizer', '?')})",
              f"- tokens per step: {counts['real_tokens']} real (prompt + response, 2x{args.num_pairs} sequences), "
              f"{counts['padded_tokens']} in TRL's right-padded batch "
              f"({1 - counts['real_tokens'] / counts['padded_tokens']:.0%} padding), {counts['response_tokens']} "
              "response tokens (the only positions whose log-probs are needed)",
              "- repetitions: each side in its own process, side order alternating per round; "
              + ", ".join(f"{side} {len(runs)} process(es) x {len(runs[0]['step_seconds'])} step(s)"
                          + (f" (the first {runs[0]['warmup_steps']} of each, which compile, left out of the medians)"
                             if runs[0].get("warmup_steps") else "")
                          for side, runs in results.items())
              + f"; model size (parameters x 4 bytes) {gib(bytes_of_model)} GiB",
              ""]
    lines.append(markdown_table(["side", "wall s/step median (min-max, n)", "CPU s/step median (min-max, n)", "peak RSS GiB median (per process)",
                                 "peak RSS / model size", "RSS after imports GiB", "step-1 loss", "step-1 logps/chosen"],
                                rows))
    if "ours" in results:
        reference_seconds = median([r["reference_seconds"] for r in results["ours"]])
        lines += ["", f"Ours, one-off per run (not in the step time): reference pass over the {args.num_pairs} pairs "
                  f"{reference_seconds:.1f} s (median), setup incl. model load {median([r['setup_seconds'] for r in results['ours']]):.1f} s."]
        if "trl_precompute" in results:
            runs = results["trl_precompute"]
            lines.append(f"- trl_precompute, one-off (not in the step time): its reference pass over the shared ids "
                         f"{median([r['reference_seconds'] for r in runs]):.1f} s (median); padding_free in effect: "
                         f"{sorted({r['padding_free'] for r in runs})} (requested True; TRL 1.16 turns it off)")
    compiled = [side for side in results if results[side][0].get("warmup_steps")]
    if compiled:
        lines.append("- first step (compilation included) of the torch_compile sides: " + ", ".join(
            f"{side} {median([r['step_cpu_seconds'][0] for r in results[side]]):.1f} CPU s" for side in compiled))
    for ours, competitor, (time_target, memory_target) in COMPARISONS:
        if ours not in results or competitor not in results:
            continue
        time_ratio = median(steps[ours]) / median(steps[competitor])
        cpu_ratio = median(cpu[ours]) / median(cpu[competitor])
        memory_ratio = median(peaks[ours]) / median(peaks[competitor])
        lines.append(f"- {ours} / {competitor}: step time **{time_ratio:.2f}x** wall, {cpu_ratio:.2f}x CPU (target <= "
                     f"{time_target}: {'met' if time_ratio <= time_target else 'MISSED'}), peak RSS "
                     f"**{memory_ratio:.2f}x** (target <= {memory_target}: "
                     f"{'met' if memory_ratio <= memory_target else 'MISSED'})")
    return "\n".join(lines) + "\n"


def flop_floor_report(args) -> str:
    """The `flop_floor` section: matmul rate of this CPU, FLOPs of one step of ours, and the floor in seconds."""
    import re

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from bench.bench_common import RESULTS_PATH, set_threads
    from bench.bench_dpo_step import _model_location, load_tokenized_pairs
    from bench.flop_floor import attended_pairs, matmul_flops_per_second, step_flops

    set_threads(args.threads)
    location = _model_location(args.model)
    pairs = load_tokenized_pairs(AutoTokenizer.from_pretrained(location), args.dataset, args.num_pairs, args.seed,
                                 args.max_length)[1]
    config = AutoConfig.from_pretrained(location)
    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(config)
    embeddings = {id(m.weight): m.weight.numel() for m in (net.get_input_embeddings(), net.get_output_embeddings())}
    # Tied or not, the embedding lookup does no FLOPs and the LM head is its own term of step_flops.
    body = sum(p.numel() for p in net.parameters()) - sum(embeddings.values())
    text_config = net.config.get_text_config()
    fed = sum(len(p.prompt_ids) - 1 + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    response = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    attended = sum(attended_pairs(len(p.prompt_ids), (len(p.chosen_ids), len(p.rejected_ids))) for p in pairs)
    flops = step_flops(body, text_config.vocab_size, text_config.hidden_size, text_config.num_hidden_layers, fed,
                       response, attended)
    rate = matmul_flops_per_second()
    floor = flops / rate
    lines = ["## 5. FLOP floor of a DPO step on this CPU (`bench/bench_dpo_step.py --flop_floor`)", ""]
    lines += machine_lines(sys.argv, args.threads)
    lines += [f"- fp32 matmul rate, {args.threads} thread(s), best of 10 half-second bursts of (2048 x 576) @ "
              f"(576 x 1536): "
              f"**{rate / 1e9:.1f} GFLOP/s**",
              f"- one step of ours on the section-1 setting ({args.num_pairs} pairs, {args.max_length} tokens): "
              f"{fed} fed tokens, {response} response tokens, {attended} attended (query, key) pairs, "
              f"{body / 1e6:.1f}M "
              f"body parameters: {flops / 1e12:.2f} TFLOP (`bench/flop_floor.py`, a lower bound)",
              f"- floor: **{floor:.1f} s/step** at that rate"]
    recorded = RESULTS_PATH.read_text(encoding="utf-8") if RESULTS_PATH.exists() else ""
    section = recorded.split("<!-- bench:dpo_step:begin -->")[-1].split("<!-- bench:dpo_step:end -->")[0]
    step = re.search(r"^\| ours \| ([0-9.]+) \(.*?\| ([0-9.]+) \(", section, flags=re.MULTILINE)
    machine = re.search(r"^- machine: ([^,]+, [^,]+),", section, flags=re.MULTILINE)
    if step and machine:
        lines.append(f"- ours as recorded in section 1 ({machine.group(1)}): {step.group(2)} CPU s/step = "
                     f"{float(step.group(2)) / floor:.2f}x this floor; compare like with like only when the machine "
                     f"line above names the same CPU (rerun `--flop_floor` there)")
    return "\n".join(lines) + "\n"


