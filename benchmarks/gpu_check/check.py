"""The check's phases in order; each records into the JSON, and one failing does not stop the others.

Imported after :func:`.verl_engine.prepare` (this module imports ``poise_verl``, which imports verl).
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.gpu_check import verl_engine
from benchmarks.gpu_check.forward_phases import (
    hand_written_conditions,
    phase_build,
    phase_checks,
    phase_engine_equivalence,
    phase_environment,
    phase_forward,
    phase_hook_alone,
)
from benchmarks.gpu_check.packed_forward import make_batch
from benchmarks.gpu_check.probe_phases import phase_buffer, phase_entropy_statistics, phase_probe, probe_rows
from benchmarks.gpu_check.settings import Settings
from benchmarks.gpu_check.summary import phase_summary
from benchmarks.gpu_check.timing import Report

HAND_WRITTEN = "hand-written packed forward (benchmarks/gpu_check/packed_forward.py)"


def run(settings: Settings, out: Path, quick: bool = False, skip_probe: bool = False, verl_unavailable=None) -> int:
    """Every phase in order; returns 0 when none failed. The JSON at ``out`` is rewritten after each.

    ``verl_unavailable``: None when :func:`.verl_engine.prepare` readied verl's engine (then it is timed),
    else why not (then the hand-written forward is timed).
    """
    torch.manual_seed(settings.seed)
    report = Report(out)
    report.log(f"gpu_check: {'quick' if quick else 'full'} run on {settings.device}, writing {out}")
    with report.phase("environment") as record:
        phase_environment(record, settings, quick)
        report.log(f"  {record['card']}, torch {record['torch']}, transformers {record['transformers']}")

    model = None
    with report.phase("build") as record:
        model = phase_build(record, settings)
        report.log(f"  {record['parameters'] / 1e6:.1f}M parameters in {record['build_s']:.1f}s")
    if model is not None:
        forward_side(report, settings, model, verl_unavailable)
        del model
        if settings.device.startswith("cuda"):
            torch.cuda.empty_cache()

    if not skip_probe:
        data = probe_rows(settings)
        with report.phase("probe") as record:
            phase_probe(record, settings, report, data)
        with report.phase("buffer") as record:
            phase_buffer(record, settings, data)
        with report.phase("entropy_statistics") as record:
            phase_entropy_statistics(record, settings, report)

    with report.phase("summary") as record:
        phase_summary(report, settings)
        record["written_to"] = report.path.name  # the file name only: a committed report names no machine folder
    failed = sorted(report.data["errors"])
    report.data["status"] = "done" if not failed else "done_with_errors"
    report.save()
    print("\n" + report.data.get("markdown", "(no table)") + "\n", flush=True)
    report.log(f"timed path: {report.data['phases'].get('forward', {}).get('timed_path_detail', 'none')}")
    report.log(
        f"status {report.data['status']}{': ' + ', '.join(failed) if failed else ''}; JSON at {report.path}"
    )
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0 if not failed else 1


def forward_side(report: Report, settings: Settings, model, verl_unavailable: str | None) -> None:
    """Checks of the hand-written forward, verl's engines where they can run, the timed forward, the hook."""
    micro_batches, _ = make_batch(settings)
    with report.phase("checks") as record:
        phase_checks(record, model, settings)
        report.log(
            f"  capture_equal={record['capture_equal']} (rel diff {record['capture_max_rel_diff']:.2e}), "
            f"packed_attention_ok={record['packed_attention_ok']} "
            f"(packed {record['packed_vs_alone_rel_diff']:.2e}, "
            f"leaky {record['leaky_vs_alone_rel_diff']:.2e})"
        )
    engines = None
    if verl_unavailable is None:
        with report.phase("engine_build") as record:
            engines = verl_engine.build_engines(model, settings)
            record.update(attention=engines.attention, engines=[type(e).__name__ for e in (engines.plain, engines.poise)])
        if engines is None:
            verl_unavailable = f"verl's engines did not build ({report.data['errors'].get('engine_build')})"
        else:
            with report.phase("engine_equivalence") as record:
                phase_engine_equivalence(record, model, engines, micro_batches, settings)
                report.log(f"  hand-written forward == verl's engine: {record['equal']}")
    if engines is not None:
        path = "verl_engine"
        detail = (
            "verl's engine: infer_batch of FSDPEngineWithLMHead (without capture) vs PoiseFSDPEngine with the "
            f"capture flag (with), FSDP2, {engines.attention}, remove-padding"
        )
    else:
        path, detail = "hand_written", f"{HAND_WRITTEN}; verl's engine not timed: {verl_unavailable}"
    report.log(f"  timed path: {detail}")

    def conditions(micro):
        if engines is not None:
            return verl_engine.conditions(engines, micro, settings)
        return hand_written_conditions(model, micro, settings)

    micro_batches = timed_forward(report, settings, conditions, path, detail)
    with report.phase("hook_alone") as record:
        forward_s = report.data["phases"].get("forward", {}).get("without", {}).get("median")
        phase_hook_alone(record, micro_batches, settings, forward_s)
        report.log(
            f"  hook: {record['per_micro_batch_s']['median'] * 1e3:.3f} ms per micro-batch"
            + (f", {record['pct_of_forward']:.3f}% of the forward" if "pct_of_forward" in record else "")
        )
    if engines is not None:
        engines.close()


def timed_forward(report: Report, settings: Settings, conditions, path: str, detail: str):
    """The ``forward`` phase; out of GPU memory, again with smaller micro-batches and log-softmax chunks.
    Returns the micro-batches it measured."""
    micro_batches, lengths = make_batch(settings)
    oom_retries: list[dict] = []
    for _ in range(3):
        out_of_memory = False
        with report.phase("forward") as record:
            record.update(timed_path=path, timed_path_detail=detail, oom_retries=oom_retries)
            try:
                phase_forward(record, conditions(micro_batches), micro_batches, lengths, settings, report)
            except torch.cuda.OutOfMemoryError:
                out_of_memory = True
                oom_retries.append(
                    {"micro_batch_sequences": settings.micro_batch_sequences, "logprob_chunk": settings.logprob_chunk}
                )
                if settings.micro_batch_sequences == 1:
                    raise
            else:
                report.log(
                    f"  overhead {record['overhead_pct_median']:+.2f}% (95% interval "
                    f"[{record['overhead_pct_ci95'][0]:+.2f}%, {record['overhead_pct_ci95'][1]:+.2f}%], "
                    f"noise {record['noise_pct']:.2f}%), {record['achieved_tflops']:.1f} TFLOP/s"
                )
        if not out_of_memory:
            break
        if settings.device.startswith("cuda"):
            torch.cuda.empty_cache()
        settings.micro_batch_sequences = max(1, settings.micro_batch_sequences // 2)
        settings.logprob_chunk = max(256, settings.logprob_chunk // 2)
        micro_batches, lengths = make_batch(settings)
        report.log(
            f"  out of memory; retrying with {settings.micro_batch_sequences} sequences per "
            f"micro-batch and log-prob chunks of {settings.logprob_chunk} tokens"
        )
    return micro_batches
