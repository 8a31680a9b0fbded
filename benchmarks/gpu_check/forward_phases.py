"""The forward-side phases: environment, model, correctness checks, the timed old-log-prob forward, the hook.

The timed forward is one of two paths (package docstring): verl's engine (:mod:`.verl_engine`) or the
hand-written packed forward (:mod:`.packed_forward`). Either gives :func:`phase_forward` its conditions: a
name (``without`` capture, ``with`` capture, more where the path has them) -> a function that prepares one
call (untimed) and returns it; the call returns per-token log-probs, entropies and the pooled features.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
import transformers

from benchmarks.gpu_check.packed_forward import (
    ATTENTION,
    MicroBatch,
    PackedAttention,
    batch_forward,
    build_model,
    logprob_forward,
    pack,
)
from benchmarks.gpu_check.settings import Settings, matmul_flops
from benchmarks.gpu_check.timing import describe, sync, timed
from poise_verl.core.capture import PackedPoolingHook, decoder_layers
from poise_verl.core.pooling import pool_packed


def phase_environment(record: dict, settings: Settings, quick: bool) -> None:
    record.update(
        quick=quick,
        device=settings.device,
        card=torch.cuda.get_device_name(0)
        if settings.device.startswith("cuda")
        else platform.processor() or "cpu",
        torch=torch.__version__,
        transformers=transformers.__version__,
        numpy=np.__version__,
        python=platform.python_version(),
        cuda=torch.version.cuda,
        cpu_threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(),
        dtype=str(settings.dtype),
        model=settings.model,
        capture_layer=settings.capture_layer,
        pool_tokens=settings.pool_tokens,
    )
    if settings.device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info()
        record.update(gpu_memory_total_gib=total / 2**30, gpu_memory_free_gib=free / 2**30)


def phase_build(record: dict, settings: Settings):
    sync(settings.device)
    start = time.perf_counter()
    model = build_model(settings)
    sync(settings.device)
    record["build_s"] = time.perf_counter() - start
    record["parameters"] = sum(p.numel() for p in model.parameters())
    record["decoder_layers"] = len(decoder_layers(model))
    record["attention"] = model.config._attn_implementation
    record["dtype"] = str(next(model.parameters()).dtype)
    first = next(model.parameters())
    record["weights_finite"] = bool(torch.isfinite(first).all())
    if settings.device.startswith("cuda"):
        record["gpu_memory_allocated_gib"] = torch.cuda.memory_allocated() / 2**30
    return model


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def phase_checks(record: dict, model, settings: Settings) -> None:
    """Correctness before timing: packed attention stays within sequences; captured features are right."""
    layer, k = settings.capture_layer, settings.pool_tokens
    generator = torch.Generator().manual_seed(settings.seed + 1)
    pair = pack(list(settings.check_lengths), settings.model["vocab_size"], settings.device, generator)
    second = slice(pair.boundaries[1], pair.boundaries[2])
    alone = MicroBatch(
        input_ids=pair.input_ids[:, second],
        position_ids=pair.position_ids[:, second],
        labels=torch.roll(pair.input_ids[0, second], -1),
        cu_seqlens=torch.tensor([0, second.stop - second.start], device=settings.device),
        boundaries=[0, second.stop - second.start],
        response_lengths=pair.response_lengths[1:],
    )
    base = model.model
    tolerance = 1e-4 if settings.dtype == torch.float32 else 5e-2

    def final_hidden(micro: MicroBatch) -> torch.Tensor:
        ATTENTION.boundaries = micro.boundaries
        return base(
            input_ids=micro.input_ids, position_ids=micro.position_ids, use_cache=False
        ).last_hidden_state[0]

    with torch.inference_mode():
        # 1. The second sequence's states, packed after the first vs alone. Leaky full-row attention is the
        #    contrast: it shows how large a difference a leak makes in this (random) model.
        reference = final_hidden(alone)
        packed = final_hidden(pair)[second]
        ATTENTION.mode = "leaky"
        try:
            leaky = final_hidden(pair)[second]
        finally:
            ATTENTION.mode = "packed"
        record["packed_vs_alone_rel_diff"] = relative_difference(packed, reference)
        record["leaky_vs_alone_rel_diff"] = relative_difference(leaky, reference)
        record["packed_attention_ok"] = bool(
            record["packed_vs_alone_rel_diff"] < tolerance
            and record["packed_vs_alone_rel_diff"] < 0.5 * record["leaky_vs_alone_rel_diff"]
        )
        # transformers' own sdpa with packed position ids (for the record: does it honour the boundaries?).
        model.config._attn_implementation = "sdpa"
        try:
            ATTENTION.boundaries = None
            sdpa_packed = base(
                input_ids=pair.input_ids, position_ids=pair.position_ids, use_cache=False
            ).last_hidden_state[0][second]
            record["transformers_sdpa_vs_alone_rel_diff"] = relative_difference(sdpa_packed, reference)
            record["transformers_sdpa_honours_packing"] = bool(
                record["transformers_sdpa_vs_alone_rel_diff"] < 0.5 * record["leaky_vs_alone_rel_diff"]
            )
        except Exception as error:  # noqa: BLE001  (informational only)
            record["transformers_sdpa_error"] = f"{type(error).__name__}: {error}"
        finally:
            model.config._attn_implementation = PackedAttention.name

        # 2. Production path (hook only) vs a reference forward with output_hidden_states=True.
        _, _, features = logprob_forward(model, pair, settings.logprob_chunk, layer, k)
        prompt_hook, response_hook = features
        raw: dict[str, torch.Tensor] = {}
        raw_handle = decoder_layers(model)[layer].register_forward_hook(
            lambda module, args, output: raw.__setitem__(
                "out", output[0] if isinstance(output, tuple) else output
            )
        )
        same_hook = PackedPoolingHook(pair.cu_seqlens, pair.response_lengths, k)
        same_handle = decoder_layers(model)[layer].register_forward_hook(same_hook)
        try:
            ATTENTION.boundaries = pair.boundaries
            states = base(
                input_ids=pair.input_ids,
                position_ids=pair.position_ids,
                use_cache=False,
                output_hidden_states=True,
            ).hidden_states
        finally:
            raw_handle.remove()
            same_handle.remove()
        record["hidden_states_len"] = len(states)
        # hidden_states[0] is the embedding output, so decoder layer L's output is hidden_states[L + 1]
        # (the last entry is the final-norm output instead, hence layer < num_layers - 1 here).
        record["hidden_states_index"] = layer + 1
        record["layer_output_is_hidden_states_index"] = bool(torch.equal(raw["out"], states[layer + 1]))
        pooled = pool_packed(states[layer + 1], pair.cu_seqlens, pair.response_lengths, k)
        # Same forward: the hook and pool_packed read the same tensor, so they must agree exactly.
        record["same_forward_max_abs_diff"] = max(
            float((same_hook.prompt_features - pooled.prompt).abs().max()),
            float((same_hook.response_features - pooled.response).abs().max()),
        )
        # Separate forwards (production hook-only vs output_hidden_states): equal up to kernel rounding.
        ref_prompt, ref_response = pooled.prompt.cpu(), pooled.response.cpu()
        scale = max(float(ref_prompt.abs().max()), float(ref_response.abs().max()), 1e-30)
        diff = max(
            float((prompt_hook - ref_prompt).abs().max()), float((response_hook - ref_response).abs().max())
        )
        record["capture_max_abs_diff"] = diff
        record["capture_max_rel_diff"] = diff / scale
        record["captured_shape"] = list(prompt_hook.shape)
        record["captured_finite"] = bool(
            torch.isfinite(prompt_hook).all() and torch.isfinite(response_hook).all()
        )
        record["capture_equal"] = bool(
            record["captured_finite"]
            and record["layer_output_is_hidden_states_index"]
            and record["same_forward_max_abs_diff"] <= 1e-6 * scale
            and record["capture_max_rel_diff"] <= (1e-5 if settings.dtype == torch.float32 else 2e-2)
        )
    record["passed"] = bool(record["packed_attention_ok"] and record["capture_equal"])


def phase_hook_alone(
    record: dict, micro_batches: list[MicroBatch], settings: Settings, forward_s: float | None
):
    """The hook's own cost per micro-batch: build positions, pool a layer-shaped tensor, copy to the CPU.

    The forward comparison above is bounded by run-to-run noise; this isolates what capture adds.
    """
    micro = micro_batches[0]
    hidden = torch.randn(1, micro.tokens, settings.model["hidden_size"], device=settings.device).to(
        settings.dtype
    )

    def once():
        hook = PackedPoolingHook(micro.cu_seqlens, micro.response_lengths, settings.pool_tokens)
        hook(None, (), hidden)
        hook.prompt_features.cpu()
        hook.response_features.cpu()

    with torch.inference_mode():
        for _ in range(3):
            once()
        times = timed(once, settings.device, settings.hook_reps, budget_s=20.0)
    stats = describe(times)
    record["per_micro_batch_s"] = stats
    per_batch = stats["median"] * len(micro_batches)
    record["per_batch_s"] = per_batch
    if forward_s:
        record["pct_of_forward"] = 100.0 * per_batch / forward_s


Conditions = dict[str, Callable[[], Callable[[], tuple]]]


def hand_written_conditions(model, micro_batches: list[MicroBatch], settings: Settings) -> Conditions:
    """The hand-written forward without and with the capture hook."""

    def condition(capture: bool):
        def prepare():
            def call():
                with torch.inference_mode():
                    log_probs, entropy, features = batch_forward(model, micro_batches, settings, capture)
                if features is not None:
                    features = (torch.cat([p for p, _ in features]), torch.cat([r for _, r in features]))
                return log_probs, entropy, features

            return call

        return prepare

    return {"without": condition(False), "with": condition(True)}


def phase_engine_equivalence(record: dict, model, engines, micro_batches: list[MicroBatch], settings: Settings):
    """The hand-written forward computes what verl's engine computes: on the same batch and weights,
    ``PoiseFSDPEngine.infer_batch`` with the capture flag (no response cut, as the hand-written hook) gives
    the same per-token log-probs and entropies and the same pooled prompt and response features."""
    from benchmarks.gpu_check import verl_engine

    hand = hand_written_conditions(model, micro_batches, settings)["with"]()()
    data = verl_engine.verl_batch(micro_batches, settings)
    engine = verl_engine.infer(engines.poise, data, verl_engine.capture_flags(settings, None))
    hand_parts = (hand[0], hand[1], *hand[2])
    engine_parts = (engine[0], engine[1], *engine[2])
    tolerance = 1e-5 if settings.dtype == torch.float32 else 5e-2  # relative to the largest value
    equal = True
    for name, ours, theirs in zip(
        ("log_probs", "entropy", "prompt_features", "response_features"), hand_parts, engine_parts, strict=True
    ):
        record[f"{name}_shape"] = list(theirs.shape)
        if ours.shape != theirs.shape:
            record[f"{name}_hand_written_shape"] = list(ours.shape)
            equal = False
            continue
        scale = max(float(theirs.abs().max()), 1e-30)
        diff = float((ours.float() - theirs.float()).abs().max())
        record[f"{name}_max_abs_diff"] = diff
        record[f"{name}_max_rel_diff"] = diff / scale
        equal &= diff / scale <= tolerance
    record["tolerance_rel"] = tolerance
    record["engine"] = type(engines.poise).__name__
    record["equal"] = bool(equal)


def phase_forward(
    record: dict, conditions: Conditions, micro_batches: list[MicroBatch], lengths, settings: Settings, report
):
    """Old-log-prob forward of the whole batch under each condition (without and with capture), alternating."""
    record["sequences"] = len(lengths)
    record["tokens"] = sum(p + r for p, r in lengths)
    record["micro_batches"] = len(micro_batches)
    record["micro_batch_tokens"] = [m.tokens for m in micro_batches]
    record["logprob_chunk"] = settings.logprob_chunk
    record["prompt_tokens_mean"] = float(np.mean([p for p, _ in lengths]))
    record["response_tokens_mean"] = float(np.mean([r for _, r in lengths]))
    flops = matmul_flops(settings.model, [p + r for p, r in lengths])
    record["forward_tflop"] = flops / 1e12
    names = list(conditions)
    times: dict[str, list[float]] = {name: [] for name in names}
    device = settings.device
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def run(name: str):
        call = conditions[name]()  # untimed: build the batch the call reads
        sync(device)
        start = time.perf_counter()
        output = call()
        sync(device)
        return time.perf_counter() - start, output

    for i in range(settings.warmup_pairs):
        for name in names:
            seconds, _ = run(name)
            report.log(f"  warm-up {i + 1}/{settings.warmup_pairs} {name}: {seconds:.3f}s")
    began = time.perf_counter()
    last = None
    for i in range(settings.timing_pairs):
        # ABAB then BABA: no condition always runs first (clock / thermal drift cancels).
        for name in names if i % 2 == 0 else names[::-1]:
            seconds, output = run(name)
            times[name].append(seconds)
            if name == "with":
                last = output
        report.log(f"  pair {i + 1}: " + ", ".join(f"{name} {times[name][-1]:.3f}s" for name in names))
        record["times_s"] = times
        report.save()
        if i + 1 >= settings.min_timing_pairs and time.perf_counter() - began > settings.forward_budget_s:
            break
    log_probs, entropy, (prompt, response) = last
    record["log_probs_finite"] = bool(torch.isfinite(log_probs).all())
    record["entropy_finite"] = bool(torch.isfinite(entropy).all())
    record["entropy_mean"] = float(entropy.mean())
    record["features_finite"] = bool(torch.isfinite(prompt).all() and torch.isfinite(response).all())
    record["features_rows"] = prompt.shape[0]
    without, with_capture = describe(times["without"]), describe(times["with"])
    record["without"], record["with"] = without, with_capture
    record["overhead_pct_median"] = 100.0 * (with_capture["median"] / without["median"] - 1.0)
    for name in names[2:]:  # more conditions of the path, against the same baseline
        record[name] = describe(times[name])
        record[f"{name}_overhead_pct_median"] = 100.0 * (record[name]["median"] / without["median"] - 1.0)
    pairs_with, pairs_without = np.asarray(times["with"]), np.asarray(times["without"])
    record["paired_diff_s"] = describe((pairs_with - pairs_without).tolist())
    rng = np.random.default_rng(settings.seed)
    draws = rng.integers(0, len(pairs_with), size=(4000, len(pairs_with)))
    boot = 100.0 * (pairs_with[draws].mean(1) / pairs_without[draws].mean(1) - 1.0)
    record["overhead_pct_mean"] = 100.0 * (pairs_with.mean() / pairs_without.mean() - 1.0)
    record["overhead_pct_ci95"] = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
    record["noise_pct"] = 100.0 * without["std"] / without["median"]  # run-to-run spread of one condition
    record["tokens_per_s"] = record["tokens"] / without["median"]
    record["achieved_tflops"] = flops / without["median"] / 1e12
    if device.startswith("cuda"):
        record["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
