"""The hand-written old-log-prob forward: what verl's engine does for the remove-padding layout, in plain
torch + transformers, for a machine where verl cannot be imported.

verl's ``FSDPEngineWithLMHead`` (``use_remove_padding=True``) runs the model on one ``(1, total_nnz)`` row of
packed sequences with position ids restarting per sequence, attention within each sequence only, labels
rolled by one over the row, and log-softmax and entropy of every token. This module does the same on an
unwrapped model: :class:`PackedAttention` (one causal SDPA call per sequence, the FLOPs of flash-attention's
varlen kernel), :func:`logprob_forward` (chunked log-probs and entropies, optional capture hook). The quick
run compares it with verl's engine (phase ``engine_equivalence``) wherever verl imports.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from transformers import AttentionInterface, Qwen3Config, Qwen3ForCausalLM

from benchmarks.gpu_check.settings import Settings
from poise_verl.core.capture import PackedPoolingHook, decoder_layers


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
