"""One prepared GPU check: what POISE's feature capture and value probe cost next to the actor's forward.

GRPO/DAPO's actor computes old log-probs and nothing else; POISE's actor also pools one decoder layer's
hidden states in that same forward (a forward hook, :class:`poise_verl.core.capture.PackedPoolingHook`, the
hook verl's engine adapter installs), and the driver fits a small probe on them every step. This script
measures both costs on a bare GPU box (no verl, Ray, vLLM or flash-attn; torch + transformers + numpy):

1. a random-initialised model of Qwen3-4B's shape in bf16, built directly on the GPU;
2. the actor's old-log-prob forward in verl's remove-padding layout: 32 rollouts of ~4096 tokens packed
   into one ``(1, total_nnz)`` row per micro-batch (8 sequences, ~32k tokens, like verl's
   ``log_prob_max_token_len_per_gpu``), position ids restarting per sequence, then chunked log-probs of
   the next tokens and per-token entropies;
3. that forward with and without the capture hook on layer 19 (k = 10), alternating, with the spread, a
   bootstrap interval and the hook timed alone; plus correctness checks (captured features are finite and
   equal the pooled ``output_hidden_states``; the packed attention does not leak across sequences);
4. the probe on the host CPU: fit from scratch on a full 4096-row buffer and predict 512 rollouts (one
   POISE step of 256 prompts x 2), the buffer insert, the entropy statistics; each as a percent of a
   conservative LOWER bound of a step's time (old-log-prob forward + training forward/backward,
   generation excluded), so every percent is an upper bound.

Run from the repository root::

    python -m benchmarks.gpu_check --out "$OUT/gpu_check.json"     # GPU, ~3-4 min on an H100
    python -m benchmarks.gpu_check --quick --out /tmp/gpu_check.json   # tiny CPU smoke path, seconds

The JSON is rewritten after every phase, so a run cut short still reports what it measured.
See docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/gpu_check.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import transformers
from transformers import AttentionInterface, Qwen3Config, Qwen3ForCausalLM

from poise_verl.core.buffer import ProbeReplayBuffer
from poise_verl.core.capture import PackedPoolingHook, decoder_layers
from poise_verl.core.entropy import DEFAULT_ENTROPY_FEATURES, entropy_feature_matrix, entropy_statistics
from poise_verl.core.pooling import pool_packed
from poise_verl.core.probe import PCARidgeProbe

# Qwen3-4B's config.json (hidden 2560, 36 layers, 32 query / 8 key-value heads of 128, MLP 9728, vocab
# 151936, tied embeddings, rope theta 1e6).
QWEN3_4B = {
    "vocab_size": 151936,
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
}
# A laptop-sized Qwen3 for --quick: same code path, every size shrunk.
TINY = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
}
QWEN3_END_OF_THINKING_ID = 151668  # "</think>" in Qwen3's tokenizer


@dataclasses.dataclass
class Settings:
    """Every size the check uses; ``full()`` is the GPU run, ``quick()`` the CPU smoke path."""

    model: dict
    device: str
    dtype: torch.dtype
    num_sequences: int  # rollouts in the measured batch
    prompt_range: tuple[int, int]  # prompt tokens, uniform in [lo, hi]
    total_range: tuple[int, int]  # prompt + response tokens, uniform in [lo, hi]
    micro_batch_sequences: int  # sequences per packed micro-batch
    logprob_chunk: int  # tokens per chunk of the log-softmax over the vocabulary
    capture_layer: int
    pool_tokens: int
    warmup_pairs: int
    timing_pairs: int
    forward_budget_s: float  # stop adding timing pairs past this (after min_timing_pairs)
    min_timing_pairs: int
    hook_reps: int
    check_lengths: tuple[tuple[int, int], tuple[int, int]]  # (prompt, response) of the 2 check sequences
    probe_rows: int  # replay-buffer capacity (official math domain: 4096 rows)
    step_rollouts: int  # rollouts per POISE step (256 prompts x n = 2)
    entropy_width: int  # padded response width for the entropy statistics (official max response 8192)
    end_of_thinking_id: int
    probe_fit_reps: int
    probe_budget_s: float  # per timed probe quantity
    optional_deadline_s: (
        float  # past this total run time, optional extras (alternative PCA, GPU entropy) are skipped
    )
    step_gpus: int  # GPUs sharing the actor's work in the step estimate (official Qwen3-4B: 2)
    train_forward_factor: float  # training forward + backward, in units of one forward
    seed: int = 0

    @staticmethod
    def full(device: str) -> Settings:
        return Settings(
            model=QWEN3_4B,
            device=device,
            dtype=torch.bfloat16,
            num_sequences=32,
            prompt_range=(256, 1024),
            total_range=(3584, 4608),
            micro_batch_sequences=8,
            logprob_chunk=4096,  # 4096 x 151936 fp32 logits = 2.5 GB, ~4 such buffers live at once
            capture_layer=19,
            pool_tokens=10,
            warmup_pairs=2,
            timing_pairs=8,
            forward_budget_s=120.0,
            min_timing_pairs=4,
            hook_reps=30,
            check_lengths=((700, 900), (500, 700)),
            probe_rows=4096,
            step_rollouts=512,
            entropy_width=8192,
            end_of_thinking_id=QWEN3_END_OF_THINKING_ID,
            probe_fit_reps=3,
            probe_budget_s=30.0,
            optional_deadline_s=330.0,
            step_gpus=2,
            train_forward_factor=3.0,
        )

    @staticmethod
    def quick(device: str) -> Settings:
        return Settings(
            model=TINY,
            device=device,
            dtype=torch.float32,  # exact comparisons on CPU; the GPU run uses bf16
            num_sequences=8,
            prompt_range=(8, 24),
            total_range=(40, 80),
            micro_batch_sequences=4,
            logprob_chunk=48,  # smaller than a micro-batch, so the chunk loop runs
            capture_layer=2,
            pool_tokens=10,
            warmup_pairs=1,
            timing_pairs=3,
            forward_budget_s=10.0,
            min_timing_pairs=3,
            hook_reps=5,
            check_lengths=((12, 20), (9, 15)),
            probe_rows=256,
            step_rollouts=64,
            entropy_width=64,
            end_of_thinking_id=TINY["vocab_size"] - 1,
            probe_fit_reps=2,
            probe_budget_s=5.0,
            optional_deadline_s=120.0,
            step_gpus=2,
            train_forward_factor=3.0,
        )


# --------------------------------------------------------------------------------------------- reporting
class Report:
    """Progress lines with elapsed time, and a JSON file rewritten (atomically) after every phase."""

    def __init__(self, path: Path):
        self.path = path
        self.start = time.perf_counter()
        self.data: dict[str, Any] = {"status": "running", "phases": {}, "errors": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:7.1f}s] {message}", flush=True)

    def save(self) -> None:
        self.data["elapsed_s"] = time.perf_counter() - self.start
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(_finite(self.data), indent=2, sort_keys=False))
        os.replace(tmp, self.path)

    @contextlib.contextmanager
    def phase(self, name: str):
        """Run one phase; record its result dict, wall time and any error, and keep going."""
        self.log(f"phase {name} ...")
        record: dict[str, Any] = {}
        self.data["phases"][name] = record
        began = time.perf_counter()
        try:
            yield record
            record["ok"] = True
        except Exception as error:  # noqa: BLE001  (one phase failing must not lose the others)
            record["ok"] = False
            self.data["errors"][name] = f"{type(error).__name__}: {error}"
            self.log(f"phase {name} FAILED: {type(error).__name__}: {error}")
            traceback.print_exc()
        finally:
            record["phase_s"] = time.perf_counter() - began
            self.log(f"phase {name} done in {record['phase_s']:.1f}s")
            self.save()


def _finite(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def describe(times: list[float]) -> dict[str, float]:
    values = np.asarray(times, dtype=np.float64)
    return {
        "n": int(values.size),
        "median": float(np.median(values)),
        "mean": float(values.mean()),
        "min": float(values.min()),
        "max": float(values.max()),
        "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
    }


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, reps: int, budget_s: float, min_reps: int = 1) -> list[float]:
    """Wall seconds of ``fn()`` per call (the device synchronised around each), up to ``reps`` calls,
    stopping early once ``budget_s`` is spent and ``min_reps`` are done."""
    times: list[float] = []
    began = time.perf_counter()
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
        if len(times) >= min_reps and time.perf_counter() - began > budget_s:
            break
    return times


# --------------------------------------------------------------------------------------------- model
def causal_sdpa(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float | None
) -> torch.Tensor:
    """Causal attention of one sequence: ``(1, Hq, L, D)``, ``(1, Hkv, L, D)`` x2 -> ``(1, L, Hq, D)``.

    ``enable_gqa`` lets SDPA's flash kernel read the 8 key-value heads directly (no repeat of K and V).
    """
    output = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, is_causal=True, scale=scaling, enable_gqa=query.shape[1] != key.shape[1]
    )
    return output.transpose(1, 2)


class PackedAttention:
    """Causal SDPA on each sequence of a packed row: verl's remove-padding semantics without flash-attn.

    verl feeds ``(1, total_nnz)`` rows to ``flash_attn_varlen_func``, which attends within each sequence
    only. This box has no flash-attn. transformers' own ``sdpa`` does detect packing from restarting
    position ids, but then builds a dense ``(total_nnz, total_nnz)`` block-diagonal mask, which rules out the
    flash kernel and spends full-row attention compute (several times the attention FLOPs at 32k tokens).
    So the benchmark registers this attention function: one causal SDPA call per sequence, the same FLOPs
    as varlen flash attention. ``boundaries`` (the packed row's cu_seqlens as ints) is set before each
    forward. ``mode = "leaky"`` attends causally across the whole row instead; it exists only as the
    contrast in the boundary check.
    """

    name = "poise_packed_sdpa"

    def __init__(self):
        self.boundaries: list[int] | None = None
        self.mode = "packed"

    def __call__(self, module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        # query: (1, Hq, N, D); key, value: (1, Hkv, N, D); attention_mask is None for an unknown name
        if self.boundaries is None:
            raise RuntimeError("PackedAttention.boundaries must be set before the forward")
        if self.boundaries[-1] != query.shape[2]:
            raise RuntimeError(
                f"boundaries end at {self.boundaries[-1]} but the row has {query.shape[2]} tokens"
            )
        if self.mode == "leaky":
            return causal_sdpa(query, key, value, scaling).contiguous(), None
        outputs = [
            causal_sdpa(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], scaling)
            for s, e in zip(self.boundaries[:-1], self.boundaries[1:])
        ]
        return torch.cat(outputs, dim=1), None  # (1, N, Hq, D)


ATTENTION = PackedAttention()
AttentionInterface.register(PackedAttention.name, ATTENTION)


def build_model(settings: Settings) -> Qwen3ForCausalLM:
    """Random weights of the configured shape, created directly on the device in the target dtype."""
    config = Qwen3Config(**settings.model)
    with torch.device(settings.device):
        try:
            # _from_config sets the default dtype while the modules are built, so no fp32 copy ever
            # exists; under torch.device the weights (and their normal_(0, 0.02) init) are made on the GPU.
            model = Qwen3ForCausalLM._from_config(
                config, attn_implementation=PackedAttention.name, dtype=settings.dtype
            )
        except Exception as error:  # noqa: BLE001  (another transformers release: the plain constructor)
            print(f"_from_config failed ({error}); building with the plain constructor", flush=True)
            previous = torch.get_default_dtype()
            torch.set_default_dtype(settings.dtype)
            try:
                model = Qwen3ForCausalLM(config)
            finally:
                torch.set_default_dtype(previous)
    model.config._attn_implementation = PackedAttention.name
    model.eval()
    model.requires_grad_(False)
    return model


def matmul_flops(model_config: dict, lengths: list[int]) -> float:
    """Forward FLOPs of the linear layers, the LM head and causal attention for sequences of these lengths."""
    h, layers = model_config["hidden_size"], model_config["num_hidden_layers"]
    q = model_config["num_attention_heads"] * model_config["head_dim"]
    kv = model_config["num_key_value_heads"] * model_config["head_dim"]
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * model_config["intermediate_size"]
    params = layers * per_layer + h * model_config["vocab_size"]
    tokens = sum(lengths)
    # Causal attention: QK^T and PV over about L^2 / 2 pairs, 2 FLOPs per multiply-add.
    attention = layers * sum(2 * 2 * (length * length / 2) * q for length in lengths)
    return 2.0 * params * tokens + attention


# --------------------------------------------------------------------------------------------- batch
@dataclasses.dataclass
class MicroBatch:
    """One packed row in verl's remove-padding layout."""

    input_ids: torch.Tensor  # (1, N)
    position_ids: torch.Tensor  # (1, N), restarting at 0 for each sequence
    labels: torch.Tensor  # (N,) next token (verl rolls the packed row by one)
    cu_seqlens: torch.Tensor  # (B + 1,) int64 on the device, like verl's nested offsets
    boundaries: list[int]  # the same, as ints
    response_lengths: torch.Tensor  # (B,) on the device

    @property
    def tokens(self) -> int:
        return self.boundaries[-1]


def pack(lengths: list[tuple[int, int]], vocab: int, device: str, generator: torch.Generator) -> MicroBatch:
    """Random token ids for (prompt, response) pairs, packed into one row."""
    seq_lens = [p + r for p, r in lengths]
    boundaries = [0] + np.cumsum(seq_lens).tolist()
    total = boundaries[-1]
    input_ids = torch.randint(0, vocab, (1, total), generator=generator).to(device)
    position_ids = torch.cat([torch.arange(n) for n in seq_lens]).unsqueeze(0).to(device)
    return MicroBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        labels=torch.roll(input_ids[0], shifts=-1),
        cu_seqlens=torch.tensor(boundaries, dtype=torch.int64, device=device),
        boundaries=[int(b) for b in boundaries],
        response_lengths=torch.tensor([r for _, r in lengths], dtype=torch.int64, device=device),
    )


def make_batch(settings: Settings) -> tuple[list[MicroBatch], list[tuple[int, int]]]:
    rng = np.random.default_rng(settings.seed)
    prompts = rng.integers(settings.prompt_range[0], settings.prompt_range[1] + 1, settings.num_sequences)
    totals = rng.integers(settings.total_range[0], settings.total_range[1] + 1, settings.num_sequences)
    lengths = [(int(p), int(t - p)) for p, t in zip(prompts, totals)]
    generator = torch.Generator().manual_seed(settings.seed)
    step = settings.micro_batch_sequences
    micro = [
        pack(lengths[i : i + step], settings.model["vocab_size"], settings.device, generator)
        for i in range(0, len(lengths), step)
    ]
    return micro, lengths


# --------------------------------------------------------------------------------------------- forward
def logprob_forward(model, micro: MicroBatch, chunk: int, capture_layer: int | None, k: int):
    """The actor's old-log-prob forward on one packed micro-batch, optionally with POISE's capture.

    Mirrors ``PoiseFSDPEngine.forward_step``: the hook is built from the device-side cu_seqlens, registered
    on the decoder layer for this forward only, and its pooled rows are copied to the CPU right after.
    Log-probs and entropies come from the final hidden states in token chunks, so the full
    ``(N, vocab)`` logits never exist at once (verl's fused / chunked-entropy options do the same).

    Returns:
        log_probs ``(N,)`` fp32, entropy ``(N,)`` fp32 (on the device), and (prompt, response) ``(B, H)``
        CPU features or None.
    """
    ATTENTION.boundaries = micro.boundaries
    hook = handle = None
    if capture_layer is not None:
        hook = PackedPoolingHook(micro.cu_seqlens, micro.response_lengths, k)
        handle = decoder_layers(model)[capture_layer].register_forward_hook(hook)
    try:
        hidden = model.model(
            input_ids=micro.input_ids, position_ids=micro.position_ids, use_cache=False
        ).last_hidden_state[0]  # (N, H)
    finally:
        if handle is not None:
            handle.remove()
    total = hidden.shape[0]
    log_probs = torch.empty(total, dtype=torch.float32, device=hidden.device)
    entropy = torch.empty(total, dtype=torch.float32, device=hidden.device)
    for start in range(0, total, chunk):
        end = min(start + chunk, total)
        logits = model.lm_head(hidden[start:end]).float()  # (c, V)
        normaliser = torch.logsumexp(logits, dim=-1)  # (c,)
        log_probs[start:end] = logits.gather(-1, micro.labels[start:end, None]).squeeze(-1) - normaliser
        # H_t = logsumexp(z) - sum_v softmax(z)_v z_v, verl's entropy_from_logits
        entropy[start:end] = normaliser - (torch.softmax(logits, dim=-1) * logits).sum(-1)
        del logits
    features = None
    if hook is not None:
        if hook.prompt_features is None:
            raise RuntimeError(f"decoder layer {capture_layer} did not run")
        features = (hook.prompt_features.cpu(), hook.response_features.cpu())
    return log_probs, entropy, features


def batch_forward(model, micro_batches: list[MicroBatch], settings: Settings, capture: bool):
    """All micro-batches, then the log-probs and entropies gathered to the CPU (as verl returns them)."""
    outputs = [
        logprob_forward(
            model,
            micro,
            settings.logprob_chunk,
            settings.capture_layer if capture else None,
            settings.pool_tokens,
        )
        for micro in micro_batches
    ]
    log_probs = torch.cat([out[0] for out in outputs]).cpu()
    entropy = torch.cat([out[1] for out in outputs]).cpu()
    features = [out[2] for out in outputs] if capture else None
    return log_probs, entropy, features


# --------------------------------------------------------------------------------------------- phases
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


def phase_forward(record: dict, model, micro_batches: list[MicroBatch], lengths, settings: Settings, report):
    """Old-log-prob forward of the whole batch, with and without capture, alternating."""
    record["sequences"] = len(lengths)
    record["tokens"] = sum(p + r for p, r in lengths)
    record["micro_batches"] = len(micro_batches)
    record["micro_batch_tokens"] = [m.tokens for m in micro_batches]
    record["logprob_chunk"] = settings.logprob_chunk
    record["prompt_tokens_mean"] = float(np.mean([p for p, _ in lengths]))
    record["response_tokens_mean"] = float(np.mean([r for _, r in lengths]))
    flops = matmul_flops(settings.model, [p + r for p, r in lengths])
    record["forward_tflop"] = flops / 1e12
    times: dict[str, list[float]] = {"without": [], "with": []}
    device = settings.device
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def run(capture: bool):
        sync(device)
        start = time.perf_counter()
        log_probs, entropy, features = batch_forward(model, micro_batches, settings, capture)
        sync(device)
        return time.perf_counter() - start, log_probs, entropy, features

    with torch.inference_mode():
        for i in range(settings.warmup_pairs):
            for capture in (False, True):
                seconds, *_ = run(capture)
                report.log(f"  warm-up {i + 1}/{settings.warmup_pairs} capture={capture}: {seconds:.3f}s")
        began = time.perf_counter()
        last = None
        for i in range(settings.timing_pairs):
            # ABAB then BABA: neither condition always runs first (clock / thermal drift cancels).
            order = (False, True) if i % 2 == 0 else (True, False)
            for capture in order:
                seconds, log_probs, entropy, features = run(capture)
                times["with" if capture else "without"].append(seconds)
                if capture:
                    last = (log_probs, entropy, features)
            report.log(f"  pair {i + 1}: without {times['without'][-1]:.3f}s, with {times['with'][-1]:.3f}s")
            record["times_s"] = times
            report.save()
            if i + 1 >= settings.min_timing_pairs and time.perf_counter() - began > settings.forward_budget_s:
                break
    log_probs, entropy, features = last
    record["log_probs_finite"] = bool(torch.isfinite(log_probs).all())
    record["entropy_finite"] = bool(torch.isfinite(entropy).all())
    record["entropy_mean"] = float(entropy.mean())
    record["features_finite"] = bool(
        all(torch.isfinite(p).all() and torch.isfinite(r).all() for p, r in features)
    )
    record["features_rows"] = sum(p.shape[0] for p, _ in features)
    without, with_capture = describe(times["without"]), describe(times["with"])
    record["without"], record["with"] = without, with_capture
    record["overhead_pct_median"] = 100.0 * (with_capture["median"] / without["median"] - 1.0)
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


@contextlib.contextmanager
def count_decomposition_time(store: list[float]):
    """Time every ``torch.linalg.svd`` / ``eigh`` call inside the block (the probe's PCA), then restore them.

    The probe looks these up on ``torch.linalg`` at call time, so wrapping the attributes splits a fit's
    time into the PCA decomposition and the rest without touching core.
    """
    originals = {name: getattr(torch.linalg, name) for name in ("svd", "eigh")}

    def wrap(original):
        def wrapped(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                store.append(time.perf_counter() - start)

        return wrapped

    for name, original in originals.items():
        setattr(torch.linalg, name, wrap(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.linalg, name, original)


def synthetic_features(rows: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Hidden-state-like rows: a decaying spectrum (a few strong directions) plus isotropic noise."""
    rank = min(256, width)
    decay = 1.0 / torch.arange(1, rank + 1, dtype=torch.float32).sqrt()
    basis = torch.randn(rank, width, generator=generator)
    return torch.randn(rows, rank, generator=generator) * decay @ basis + 0.1 * torch.randn(
        rows, width, generator=generator
    )


def probe_rows(settings: Settings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A full buffer: ``(N, H)`` prompt and response pools, ``(N, 3)`` entropy scalars, ``(N,)`` targets."""
    width, rows = settings.model["hidden_size"], settings.probe_rows
    generator = torch.Generator().manual_seed(settings.seed + 2)
    prompt = synthetic_features(rows, width, generator)
    response = synthetic_features(rows, width, generator)
    scalars = torch.rand(rows, len(DEFAULT_ENTROPY_FEATURES), generator=generator) * 3
    targets = (torch.rand(rows, generator=generator) < 0.5).to(torch.float32)  # n = 2: sibling reward 0 or 1
    return prompt, response, scalars, targets


def phase_probe(record: dict, settings: Settings, report, data) -> None:
    """The probe worker's CPU work for one step: fit from scratch on a full buffer, predict one batch."""
    prompt, response, scalars, targets = data
    width, rows, batch = settings.model["hidden_size"], settings.probe_rows, settings.step_rollouts
    record.update(rows=rows, predict_rows=batch, feature_width=width, scalars=scalars.shape[1])
    all_threads = torch.get_num_threads()
    record["threads_all"] = all_threads

    probe = PCARidgeProbe()  # official: PCA 32 / 64, ridge alpha 100
    fit_metrics: list[dict] = []
    # ProbeWorker calls torch.set_num_threads(1): that is the production setting.
    for label, threads in (("1_thread", 1), ("all_threads", all_threads)):
        torch.set_num_threads(threads)
        try:
            svd_times: list[float] = []
            with count_decomposition_time(svd_times):
                times = timed(
                    lambda: fit_metrics.append(probe.fit(prompt, response, scalars, targets)),
                    "cpu",
                    settings.probe_fit_reps,
                    settings.probe_budget_s,
                )
            record[f"fit_{label}_s"] = describe(times)
            record[f"fit_{label}_decomposition_share"] = sum(svd_times) / sum(times)
            report.log(
                f"  fit ({label}): median {np.median(times):.3f}s over {len(times)}, "
                f"PCA decomposition (svd/eigh) {100 * sum(svd_times) / sum(times):.0f}% of it"
            )
            predict_times = timed(
                lambda: probe.predict(prompt[:batch], response[:batch], scalars[:batch]),
                "cpu",
                20,
                settings.probe_budget_s,
            )
            record[f"predict_{label}_s"] = describe(predict_times)
        finally:
            torch.set_num_threads(all_threads)
        report.save()
    record["fit_metrics"] = fit_metrics[-1]
    record["predictions_finite"] = bool(
        torch.isfinite(probe.predict(prompt[:batch], response[:batch], scalars[:batch])).all()
    )
    record["probe_on_gpu"] = "not supported: probe.py moves its inputs to CPU float64 (_as_matrix), by design"

    # The PCA of one 4096 x H block, two ways, single-threaded like the worker: the exact top-64 axes from
    # the Gram matrix (what core does when rows >= features) and a randomized SVD, for core to weigh.
    if report.elapsed() > settings.optional_deadline_s:
        record["alt_pca"] = "skipped: the run is past optional_deadline_s"
    else:
        torch.set_num_threads(1)
        try:
            standardised = response.double()
            standardised = (standardised - standardised.mean(0)) / standardised.std(0, correction=0).clamp(
                min=1e-6
            )
            start = time.perf_counter()
            _, eigenvectors = torch.linalg.eigh(standardised.T @ standardised)
            record["alt_gram_eigh_1_thread_s"] = time.perf_counter() - start
            exact = eigenvectors[:, -64:]  # (H, 64)
            start = time.perf_counter()
            _, _, approximate = torch.svd_lowrank(standardised, q=64 + 16, niter=4)
            record["alt_lowrank_svd_1_thread_s"] = time.perf_counter() - start
            # 1.0 when the randomized top-64 subspace equals the exact one.
            record["alt_lowrank_subspace_overlap"] = float((exact.T @ approximate[:, :64]).pow(2).sum() / 64)
        finally:
            torch.set_num_threads(all_threads)
        report.save()


def phase_buffer(record: dict, settings: Settings, data) -> None:
    """Buffer at capacity: insert one step's rollouts (evicting as many), then read every row for the fit."""
    prompt, response, scalars, targets = data
    rows, batch = settings.probe_rows, settings.step_rollouts
    buffer = ProbeReplayBuffer({"math": rows, "code": rows, "other": rows})
    uids = [f"old{i // 2}" for i in range(rows)]
    buffer.add_groups(prompt, response, scalars, targets, uids, ["math"] * rows)
    step_counter = iter(range(10**6))

    def insert_and_read():
        tag = next(step_counter)
        new_uids = [f"s{tag}_{i // 2}" for i in range(batch)]
        buffer.add_groups(
            prompt[:batch], response[:batch], scalars[:batch], targets[:batch], new_uids, ["math"] * batch
        )
        buffer.dataset()

    record["buffer_insert_and_dataset_s"] = describe(
        timed(insert_and_read, "cpu", 5, settings.probe_budget_s)
    )
    record["buffer_rows_after"] = buffer.num_rows


def phase_entropy_statistics(record: dict, settings: Settings, report) -> None:
    """Entropy statistics of one step's rollouts on the driver (CPU), padded to the max response width."""
    batch, width_t = settings.step_rollouts, settings.entropy_width
    generator = torch.Generator().manual_seed(settings.seed + 3)
    lengths = torch.randint(width_t // 8, width_t + 1, (batch,), generator=generator)
    mask = torch.arange(width_t).unsqueeze(0) < lengths.unsqueeze(1)
    entropies = torch.rand(batch, width_t, generator=generator) * 3
    response_ids = torch.randint(0, settings.end_of_thinking_id, (batch, width_t), generator=generator)
    close = (torch.rand(batch, generator=generator) * lengths.float()).long()  # where </think> falls
    has_close = torch.rand(batch, generator=generator) < 0.9  # 10%: thinking cut off by the length limit
    response_ids[has_close, close[has_close]] = settings.end_of_thinking_id

    def statistics(device: str):
        e, m, ids = entropies.to(device), mask.to(device), response_ids.to(device)

        def once():
            stats = entropy_statistics(e, m, ids, settings.end_of_thinking_id)
            return entropy_feature_matrix(stats).cpu()

        return once

    record["entropy_stats_cpu_s"] = describe(timed(statistics("cpu"), "cpu", 10, settings.probe_budget_s))
    record["entropy_width"] = width_t
    if settings.device.startswith("cuda") and report.elapsed() < settings.optional_deadline_s:
        once = statistics(settings.device)
        once()
        record["entropy_stats_gpu_s"] = describe(timed(once, settings.device, 10, settings.probe_budget_s))


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
    rows = [
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


# --------------------------------------------------------------------------------------------- main
def default_out() -> str:
    out = os.environ.get("OUT")
    return str(Path(out) / "gpu_check.json") if out else "gpu_check.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny model and batch on the CPU (smoke test)")
    parser.add_argument(
        "--out", default=default_out(), help="JSON result path (default: $OUT/gpu_check.json)"
    )
    parser.add_argument("--device", default=None, help="default: cuda when available (cpu with --quick)")
    parser.add_argument(
        "--dtype",
        choices=["bfloat16", "float32"],
        default=None,
        help="model dtype (default: bfloat16, float32 with --quick)",
    )
    parser.add_argument("--timing-pairs", type=int, default=None, help="alternating with/without pairs")
    parser.add_argument("--micro-batch-sequences", type=int, default=None)
    parser.add_argument("--logprob-chunk", type=int, default=None)
    parser.add_argument("--skip-probe", action="store_true", help="skip the CPU probe phase")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = args.device or ("cpu" if args.quick or not torch.cuda.is_available() else "cuda")
    settings = Settings.quick(device) if args.quick else Settings.full(device)
    if args.dtype:
        settings.dtype = getattr(torch, args.dtype)
    if args.timing_pairs:
        settings.timing_pairs = args.timing_pairs
    if args.micro_batch_sequences:
        settings.micro_batch_sequences = args.micro_batch_sequences
    if args.logprob_chunk:
        settings.logprob_chunk = args.logprob_chunk
    if not args.quick and not device.startswith("cuda"):
        print("warning: the full check on a CPU takes hours; use --quick", file=sys.stderr, flush=True)
    return run(settings, Path(args.out), quick=args.quick, skip_probe=args.skip_probe)


def run(settings: Settings, out: Path, quick: bool = False, skip_probe: bool = False) -> int:
    """Every phase in order; returns 0 when none failed. The JSON at ``out`` is rewritten after each."""
    device = settings.device
    torch.manual_seed(settings.seed)
    report = Report(out)
    report.log(f"gpu_check: {'quick' if quick else 'full'} run on {device}, writing {out}")
    with report.phase("environment") as record:
        phase_environment(record, settings, quick)
        report.log(f"  {record['card']}, torch {record['torch']}, transformers {record['transformers']}")

    model = None
    with report.phase("build") as record:
        model = phase_build(record, settings)
        report.log(f"  {record['parameters'] / 1e6:.1f}M parameters in {record['build_s']:.1f}s")
    micro_batches, lengths = make_batch(settings)

    if model is not None:
        with report.phase("checks") as record:
            phase_checks(record, model, settings)
            report.log(
                f"  capture_equal={record['capture_equal']} (rel diff {record['capture_max_rel_diff']:.2e}), "
                f"packed_attention_ok={record['packed_attention_ok']} "
                f"(packed {record['packed_vs_alone_rel_diff']:.2e}, "
                f"leaky {record['leaky_vs_alone_rel_diff']:.2e})"
            )

        oom_retries: list[dict] = []
        for _ in range(3):
            out_of_memory = False
            with report.phase("forward") as record:
                record["oom_retries"] = oom_retries
                try:
                    phase_forward(record, model, micro_batches, lengths, settings, report)
                except torch.cuda.OutOfMemoryError:
                    out_of_memory = True
                    oom_retries.append(
                        {
                            "micro_batch_sequences": settings.micro_batch_sequences,
                            "logprob_chunk": settings.logprob_chunk,
                        }
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
            # Smaller micro-batches and log-softmax chunks, then measure again.
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            settings.micro_batch_sequences = max(1, settings.micro_batch_sequences // 2)
            settings.logprob_chunk = max(256, settings.logprob_chunk // 2)
            micro_batches, lengths = make_batch(settings)
            report.log(
                f"  out of memory; retrying with {settings.micro_batch_sequences} sequences per "
                f"micro-batch and log-prob chunks of {settings.logprob_chunk} tokens"
            )

        with report.phase("hook_alone") as record:
            forward_s = report.data["phases"].get("forward", {}).get("without", {}).get("median")
            phase_hook_alone(record, micro_batches, settings, forward_s)
            report.log(
                f"  hook: {record['per_micro_batch_s']['median'] * 1e3:.3f} ms per micro-batch"
                + (f", {record['pct_of_forward']:.3f}% of the forward" if "pct_of_forward" in record else "")
            )
        del model
        if device.startswith("cuda"):
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
        record["written_to"] = str(report.path)
    failed = sorted(report.data["errors"])
    report.data["status"] = "done" if not failed else "done_with_errors"
    report.save()
    print("\n" + report.data.get("markdown", "(no table)") + "\n", flush=True)
    report.log(
        f"status {report.data['status']}{': ' + ', '.join(failed) if failed else ''}; JSON at {report.path}"
    )
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
