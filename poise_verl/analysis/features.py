"""POISE's probe features phi(x, y) of sampled rollouts, for every requested decoder layer in one forward.

The forward runs in verl's remove-padding (packed) layout, the one the actor's old-log-prob pass uses:
the rollouts of a micro-batch are concatenated into one row, each its prompt then its response, with
position ids restarting at 0 per rollout and no attention mask (transformers then builds a block-diagonal
causal mask from the position ids when no attention mask and no KV cache are passed, so no rollout attends
to another; ``check_packed_forward`` verifies this once per run). A ``core.capture.PackedPoolingHook`` on each requested decoder layer pools that layer's output
(mean of the last ``k`` prompt tokens, mean of the last ``k`` response tokens up to the last end-of-thinking
token), the same hook the training's feature capture uses, so only ``(B, H)`` rows per layer are kept
(no ``output_hidden_states``). Token entropies come from the same forward's logits (divided by the rollout
temperature, as verl's old-log-prob pass does) and are summarised by ``core.entropy``.

Layer ``l`` is the 0-based decoder layer whose OUTPUT is pooled (``poise.probe_layer``'s convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from poise_verl.core.capture import PackedPoolingHook, decoder_layers
from poise_verl.core.entropy import DEFAULT_ENTROPY_FEATURES, entropy_feature_matrix, entropy_statistics
from poise_verl.core.pooling import DEFAULT_POOL_TOKENS, response_cut_at_last_marker_packed


@dataclass
class RolloutFeatures:
    """Features of ``B`` rollouts.

    Attributes:
        prompt: layer -> ``(B, H)`` float32 pooled prompt states.
        response: layer -> ``(B, H)`` float32 pooled response states.
        scalars: ``(B, S)`` float32 entropy statistics (``entropy_names``).
        entropy_names: the statistics in ``scalars``' columns.
        empty_responses: rollouts whose response pool was empty (zeros).
    """

    prompt: dict[int, torch.Tensor]
    response: dict[int, torch.Tensor]
    scalars: torch.Tensor
    entropy_names: tuple[str, ...]
    empty_responses: int


def _micro_batches(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Consecutive index lists whose total length stays within ``token_budget`` (at least one each)."""
    batches, current, total = [], [], 0
    for i, length in enumerate(lengths):
        if current and total + length > token_budget:
            batches.append(current)
            current, total = [], 0
        current.append(i)
        total += length
    if current:
        batches.append(current)
    return batches


def _packed(prompts: Sequence[list[int]], responses: Sequence[list[int]], device):
    sequences = [p + r for p, r in zip(prompts, responses, strict=True)]
    lengths = torch.tensor([len(s) for s in sequences])
    cu_seqlens = torch.zeros(len(sequences) + 1, dtype=torch.int64)
    cu_seqlens[1:] = lengths.cumsum(0)
    input_ids = torch.tensor([t for s in sequences for t in s], device=device).unsqueeze(0)  # (1, N)
    position_ids = torch.cat([torch.arange(int(n)) for n in lengths]).to(device).unsqueeze(0)  # (1, N)
    response_lengths = torch.tensor([len(r) for r in responses], dtype=torch.int64)
    return input_ids, position_ids, cu_seqlens, response_lengths


@torch.no_grad()
def check_packed_forward(
    model, prompts: Sequence[list[int]], responses: Sequence[list[int]], tol: float = 1e-2
):
    """Raise when the packed forward of the first rollouts differs from their separate forwards.

    A model whose attention ignores position-id packing would let rollouts attend to each other.
    ``tol`` is relative to the largest logit (bf16 forwards differ by ~1e-3 relative).
    """
    count = min(3, len(prompts))
    device = next(model.parameters()).device
    input_ids, position_ids, cu_seqlens, _ = _packed(prompts[:count], responses[:count], device)
    packed = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits[0].float()
    for i in range(count):
        start, end = int(cu_seqlens[i]), int(cu_seqlens[i + 1])
        alone = model(input_ids=input_ids[:, start:end], use_cache=False).logits[0].float()
        scale = alone.abs().max().clamp(min=1.0)
        error = float((packed[start:end] - alone).abs().max() / scale)
        if error > tol:
            raise RuntimeError(
                f"the packed forward (position ids restarting per rollout, no attention mask) differs from a "
                f"separate forward by {error:.3g} (relative) for rollout {i}: this model's attention does not "
                "support packed sequences; use a model with sdpa/eager/flash attention in transformers >= 5"
            )


def _token_entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``(N, V)`` logits -> ``(N,)`` entropy of softmax(logits / T), in float32."""
    z = logits.float() / temperature
    log_probs = torch.log_softmax(z, dim=-1)
    return -(log_probs.exp() * log_probs).sum(-1)


@torch.no_grad()
def extract_features(
    model,
    prompts: Sequence[list[int]],
    responses: Sequence[list[int]],
    layers: Sequence[int],
    k: int = DEFAULT_POOL_TOKENS,
    end_of_thinking_token_id: int | Sequence[int] | None = None,
    cut_response_at_end_of_thinking: bool = True,
    temperature: float = 1.0,
    token_budget: int = 8192,
    entropy_names: Sequence[str] = DEFAULT_ENTROPY_FEATURES,
    progress: bool = False,
) -> RolloutFeatures:
    """phi for each rollout ``prompts[i] + responses[i]`` (token ids; responses include their EOS).

    Args:
        layers: 0-based decoder layers to pool (all of them hooked in the same forward).
        k: pooled tokens per part (official: 10).
        end_of_thinking_token_id: the end-of-thinking marker's id (or ids, for a marker of several tokens): splits
            the entropy statistics into reasoning/answer parts and, with ``cut_response_at_end_of_thinking``,
            ends the response pool at the marker's last occurrence.
        temperature: the rollout temperature (entropies are of the sampling distribution).
        token_budget: tokens per packed forward.
    """
    device = next(model.parameters()).device
    stack = decoder_layers(model)
    for layer in layers:
        if not 0 <= layer < len(stack):
            raise ValueError(f"layer {layer} outside the model's {len(stack)} decoder layers (0-based)")
    cut_id = end_of_thinking_token_id if cut_response_at_end_of_thinking else None
    prompt_rows: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    response_rows: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    scalar_rows, empty = [], 0
    batches = _micro_batches([len(p) + len(r) for p, r in zip(prompts, responses, strict=True)], token_budget)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="features", unit="batch")
    for batch in batches:
        batch_prompts = [prompts[i] for i in batch]
        batch_responses = [responses[i] for i in batch]
        input_ids, position_ids, cu_seqlens, response_lengths = _packed(
            batch_prompts, batch_responses, device
        )
        pool_lengths = response_cut_at_last_marker_packed(
            input_ids.cpu(), cu_seqlens, response_lengths, cut_id
        )
        hooks = {layer: PackedPoolingHook(cu_seqlens, response_lengths, k, pool_lengths) for layer in layers}
        # Response token t of rollout i is predicted by the logits one position earlier; compute logits only
        # there (logits_to_keep takes the positions), not over every prompt token of the packed row.
        predicting = torch.cat(
            [
                torch.arange(int(end) - int(length) - 1, int(end) - 1)
                for end, length in zip(cu_seqlens[1:], response_lengths)
            ]
        ).to(device)
        handles = [stack[layer].register_forward_hook(hook) for layer, hook in hooks.items()]
        try:
            logits = model(
                input_ids=input_ids, position_ids=position_ids, logits_to_keep=predicting, use_cache=False
            ).logits[0]
        finally:
            for handle in handles:
                handle.remove()
        for layer, hook in hooks.items():
            prompt_rows[layer].append(hook.prompt_features.cpu())
            response_rows[layer].append(hook.response_features.cpu())
        empty += int(hooks[layers[0]].positions.response_empty.sum()) if layers else 0

        entropy = _token_entropy(logits, temperature).cpu()  # (sum R_i,)
        width = max(1, int(response_lengths.max()))
        entropies = torch.zeros(len(batch), width)
        response_ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width)
        offset = 0
        for row in range(len(batch)):
            end, length = int(cu_seqlens[row + 1]), int(response_lengths[row])
            entropies[row, :length] = entropy[offset : offset + length]
            response_ids[row, :length] = input_ids[0, end - length : end].cpu()
            mask[row, :length] = 1.0
            offset += length
        stats = entropy_statistics(entropies, mask, response_ids, end_of_thinking_token_id)
        scalar_rows.append(entropy_feature_matrix(stats, tuple(entropy_names)))
    return RolloutFeatures(
        prompt={layer: torch.cat(rows) for layer, rows in prompt_rows.items()},
        response={layer: torch.cat(rows) for layer, rows in response_rows.items()},
        scalars=torch.cat(scalar_rows),
        entropy_names=tuple(entropy_names),
        empty_responses=empty,
    )
