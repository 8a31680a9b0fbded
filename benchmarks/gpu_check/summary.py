"""The summary: a step-time lower bound, every cost as a percent of it, and the markdown table."""

from __future__ import annotations

from typing import Any

from benchmarks.gpu_check.settings import Settings
from benchmarks.gpu_check.timing import Report

EQUIVALENCE_PARTS = ("log_probs", "entropy", "prompt_features", "response_features")


def phase_summary(report: Report, settings: Settings) -> None:
    """Step estimate, percents, and the markdown table."""
    phases = report.data["phases"]
    forward, probe = phases.get("forward", {}), phases.get("probe", {})
    hook, checks = phases.get("hook_alone", {}), phases.get("checks", {})
    buffer, entropy_phase = phases.get("buffer", {}), phases.get("entropy_statistics", {})
    summary: dict[str, Any] = {}
    forward_s = forward.get("without", {}).get("median")
    if forward_s:
        scale = settings.step_rollouts / forward["sequences"]
        old_log_prob_s = forward_s * scale  # one GPU, all the step's rollouts
        # Lower bound: old-log-prob forward + training forward/backward (~3 forwards, no recomputation),
        # shared by step_gpus GPUs, generation (the largest phase in practice) left out entirely.
        step_s = old_log_prob_s * (1.0 + settings.train_forward_factor) / settings.step_gpus
        summary.update(
            old_log_prob_forward_step_1gpu_s=old_log_prob_s,
            step_lower_bound_s=step_s,
            step_lower_bound_formula=(
                f"forward({forward['sequences']} seqs) x {scale:g} x (1 + {settings.train_forward_factor:g}) "
                f"/ {settings.step_gpus} GPUs; generation excluded"
            ),
            capture_overhead_pct=forward.get("overhead_pct_median"),
            capture_overhead_ci95_pct=forward.get("overhead_pct_ci95"),
            capture_noise_pct=forward.get("noise_pct"),
            hook_alone_pct_of_forward=hook.get("pct_of_forward"),
        )
        if "predict_all_threads_s" in probe and "entropy_stats_cpu_s" in entropy_phase and buffer.get("ok"):
            fit = probe["fit_1_thread_s"]["median"]
            predict = probe["predict_1_thread_s"]["median"]
            entropy = entropy_phase["entropy_stats_cpu_s"]["median"]
            insert = buffer["buffer_insert_and_dataset_s"]["median"]
            total = fit + predict + entropy + insert
            summary.update(
                probe_fit_pct_of_step=100.0 * fit / step_s,
                probe_fit_all_threads_pct_of_step=100.0 * probe["fit_all_threads_s"]["median"] / step_s,
                probe_predict_pct_of_step=100.0 * predict / step_s,
                entropy_stats_pct_of_step=100.0 * entropy / step_s,
                buffer_pct_of_step=100.0 * insert / step_s,
                probe_total_pct_of_step=100.0 * total / step_s,
                probe_total_s=total,
                # The trainer waits for predict and the entropy statistics; the buffer insert and the refit
                # are Ray calls issued after the advantages and collected later, overlapping the update.
                probe_critical_path_pct_of_step=100.0 * (predict + entropy) / step_s,
            )
    if summary.get("capture_overhead_pct") is not None:
        summary["capture_under_1pct"] = bool(
            (summary.get("hook_alone_pct_of_forward") or 0.0) < 1.0 and forward["overhead_pct_ci95"][0] < 1.0
        )
    if summary.get("probe_total_pct_of_step") is not None:
        summary["probe_under_1pct"] = bool(summary["probe_total_pct_of_step"] < 1.0)
    summary["checks_passed"] = checks.get("passed")
    summary["timed_path"] = forward.get("timed_path")
    summary["engine_matches_hand_written"] = phases.get("engine_equivalence", {}).get("equal")
    report.data["summary"] = summary
    report.data["markdown"] = markdown(report.data, settings)


def _num(value, fmt: str = "{:.3f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def _spread(stats: dict | None, scale: float = 1.0, fmt: str = "{:.3f}") -> str:
    """``median [min-max], n=...`` of a ``describe`` dict, times ``scale``."""
    if not stats:
        return "n/a"
    median, low, high = (fmt.format(stats[key] * scale) for key in ("median", "min", "max"))
    return f"{median} [{low}-{high}], n={stats['n']}"


def markdown(data: dict, settings: Settings) -> str:
    phases = data["phases"]
    env, forward, probe = phases.get("environment", {}), phases.get("forward", {}), phases.get("probe", {})
    hook, checks = phases.get("hook_alone", {}), phases.get("checks", {})
    buffer, entropy_phase = phases.get("buffer", {}), phases.get("entropy_statistics", {})
    summary = data.get("summary", {})

    interval = forward.get("overhead_pct_ci95")
    hook_ms = None if hook.get("per_batch_s") is None else hook["per_batch_s"] * 1e3
    small_parts = None
    if summary.get("probe_predict_pct_of_step") is not None:
        small_parts = sum(
            summary[key]
            for key in ("probe_predict_pct_of_step", "buffer_pct_of_step", "entropy_stats_pct_of_step")
        )
    capture_check = (
        f"{checks.get('capture_equal')} (max rel diff {_num(checks.get('capture_max_rel_diff'), '{:.1e}')})"
    )
    boundary_check = (
        f"{checks.get('packed_attention_ok')} "
        f"(rel diff packed {_num(checks.get('packed_vs_alone_rel_diff'), '{:.1e}')}"
        f", leaky {_num(checks.get('leaky_vs_alone_rel_diff'), '{:.1e}')})"
    )
    pca = (
        f"{_num(probe.get('alt_gram_eigh_1_thread_s'))} / {_num(probe.get('alt_lowrank_svd_1_thread_s'))}"
        f" (subspace overlap {_num(probe.get('alt_lowrank_subspace_overlap'), '{:.4f}')})"
    )
    equivalence = phases.get("engine_equivalence", {})
    if equivalence.get("equal") is not None:
        worst = max(equivalence.get(f"{name}_max_rel_diff", 0.0) for name in EQUIVALENCE_PARTS)
        engine_check = f"{equivalence['equal']} (max rel diff {_num(worst, '{:.1e}')})"
    else:
        engine_check = "not run (verl's engine not timed)"
    flag_off = forward.get("poise_engine_flag_off_overhead_pct_median")
    rows = [
        ("timed path", forward.get("timed_path_detail", "n/a")),
        ("device", f"{env.get('card')} ({env.get('device')})"),
        ("torch / transformers", f"{env.get('torch')} / {env.get('transformers')}"),
        (
            "batch",
            (
                f"{forward.get('sequences')} rollouts, {forward.get('tokens')} tokens, "
                f"{forward.get('micro_batches')} packed micro-batches"
            ),
        ),
        ("capture", f"decoder layer {settings.capture_layer}, k = {settings.pool_tokens}"),
        ("forward, no capture (s): median [min-max]", _spread(forward.get("without"))),
        ("forward, with capture (s): median [min-max]", _spread(forward.get("with"))),
        ("capture overhead, ratio of medians", _num(forward.get("overhead_pct_median"), "{:+.2f}%")),
        ("PoiseFSDPEngine without the capture flag, ratio of medians", _num(flag_off, "{:+.2f}%")),
        (
            "capture overhead, paired bootstrap 95% interval",
            "n/a" if not interval else f"[{interval[0]:+.2f}%, {interval[1]:+.2f}%]",
        ),
        ("run-to-run noise of one condition (std / median)", _num(forward.get("noise_pct"), "{:.2f}%")),
        (
            "hook alone per forward (ms) / % of forward",
            f"{_num(hook_ms, '{:.2f}')} / {_num(hook.get('pct_of_forward'), '{:.3f}%')}",
        ),
        (
            "forward throughput (tokens/s, TFLOP/s)",
            (
                f"{_num(forward.get('tokens_per_s'), '{:.0f}')}, "
                f"{_num(forward.get('achieved_tflops'), '{:.1f}')}"
            ),
        ),
        ("peak GPU memory (GiB)", _num(forward.get("peak_gpu_memory_gib"), "{:.1f}")),
        ("check: capture == pooled hidden_states", capture_check),
        ("check: packed attention stays within sequences", boundary_check),
        ("check: hand-written forward == verl's engine (log-probs, entropy, features)", engine_check),
        (f"probe fit, {probe.get('rows')} rows, 1 thread (s)", _spread(probe.get("fit_1_thread_s"))),
        (f"probe fit, {probe.get('threads_all')} threads (s)", _spread(probe.get("fit_all_threads_s"))),
        (
            "PCA decomposition share of the fit (1 thread)",
            _num(probe.get("fit_1_thread_decomposition_share"), "{:.0%}"),
        ),
        ("one PCA block, 1 thread: Gram + eigh / randomized SVD (s)", pca),
        (
            f"probe predict, {probe.get('predict_rows')} rows, 1 thread (ms)",
            _spread(probe.get("predict_1_thread_s"), 1e3, "{:.2f}"),
        ),
        (
            "buffer insert + read at capacity (ms)",
            _spread(buffer.get("buffer_insert_and_dataset_s"), 1e3, "{:.2f}"),
        ),
        ("entropy statistics, CPU (ms)", _spread(entropy_phase.get("entropy_stats_cpu_s"), 1e3, "{:.2f}")),
        ("step lower bound (s)", _num(summary.get("step_lower_bound_s"), "{:.1f}")),
        ("step lower bound, how", summary.get("step_lower_bound_formula", "n/a")),
        ("capture, % of forward (hook alone)", _num(summary.get("hook_alone_pct_of_forward"), "{:.3f}%")),
        (
            "probe fit, % of step (1 thread / all threads)",
            (
                f"{_num(summary.get('probe_fit_pct_of_step'), '{:.2f}%')} / "
                f"{_num(summary.get('probe_fit_all_threads_pct_of_step'), '{:.2f}%')}"
            ),
        ),
        ("probe predict + buffer + entropy statistics, % of step", _num(small_parts, "{:.3f}%")),
        (
            "all probe work in series, % of step (upper bound)",
            _num(summary.get("probe_total_pct_of_step"), "{:.2f}%"),
        ),
        (
            "probe work the trainer waits for (predict + entropy statistics), % of step",
            _num(summary.get("probe_critical_path_pct_of_step"), "{:.3f}%"),
        ),
    ]
    lines = ["| quantity | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)
