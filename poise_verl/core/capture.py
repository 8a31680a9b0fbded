"""Capturing pooled hidden states from inside a forward pass, with a forward hook (pure torch).

The hook pools a decoder layer's output right where it is produced, so only the ``(B, H)`` pooled rows
outlive the layer's ``(1, total_nnz, H)`` output: no ``output_hidden_states=True`` (which would keep every
layer's states), no second forward pass. verl's engine adapter (:mod:`poise_verl.verl_ext.capture_engine`)
and the GPU benchmark use the same hook.

Ulysses sequence parallelism: after a decoder layer each rank holds a contiguous slice
``[rank * L, (rank + 1) * L)`` of the (padded) packed row, so each rank pools the positions it holds and the
partial sums are all-reduced over the sequence-parallel group.

Without remove-padding (``right_padded=True``) the layer output is ``(B, S, H)``: sample ``i``'s tokens sit
at the start of row ``i``, as verl's FSDP engine lays them out when ``use_remove_padding=False``.
"""

from __future__ import annotations

import torch

from poise_verl.core.pooling import (
    pool_at_positions,
    pooled_positions_packed,
    pooled_positions_right_padded_rows,
)


def decoder_layers(module: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layer list of a (possibly FSDP-wrapped) transformers causal LM."""
    root = getattr(module, "_fsdp_wrapped_module", module)
    for path in (
        "model.layers",
        "model.language_model.layers",
        "language_model.model.layers",
        "transformer.h",
    ):
        obj = root
        for name in path.split("."):
            obj = getattr(obj, name, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise ValueError(
        f"poise feature capture: cannot find the decoder layers of {type(root).__name__}; "
        "expected model.layers (Qwen/Llama), model.language_model.layers or transformer.h"
    )


class PackedPoolingHook:
    """Forward hook that pools a decoder layer's packed output into ``(B, H)`` prompt and response rows.

    Args:
        cu_seqlens: ``(B+1,)`` offsets of each sequence in the packed row (prompt then response).
        response_lengths: ``(B,)`` response tokens per sequence.
        k: pool the last k prompt and the last k response tokens.
        response_pool_lengths: ``(B,)`` optional cut of the response pool (``response_cut_at_last_marker_packed``).
        sp_rank, sp_size, sp_group: Ulysses sequence-parallel layout; the layer output on this rank is the
            slice ``[sp_rank * L, (sp_rank + 1) * L)`` of the (padded) packed row.
        right_padded: the layer output is ``(B, S, H)`` right-padded rows instead of one packed row
            (verl's engine with ``use_remove_padding=False``); not combinable with sequence parallelism.
    """

    def __init__(
        self,
        cu_seqlens,
        response_lengths,
        k,
        response_pool_lengths=None,
        sp_rank=0,
        sp_size=1,
        sp_group=None,
        right_padded=False,
    ):
        if right_padded and sp_size > 1:
            raise ValueError("sequence parallelism splits the packed row: it needs the remove-padding layout")
        self.cu_seqlens = cu_seqlens
        self.positions = pooled_positions_packed(cu_seqlens, response_lengths, k, response_pool_lengths)
        self.right_padded = right_padded
        self.sp_rank, self.sp_size, self.sp_group = sp_rank, sp_size, sp_group
        self.prompt_features: torch.Tensor | None = None
        self.response_features: torch.Tensor | None = None

    def __call__(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        p = self.positions
        if self.right_padded:  # (B, S, H) rows -> the flattened (B * S) axis
            p = pooled_positions_right_padded_rows(p, self.cu_seqlens, hidden.shape[1])
        hidden = hidden.reshape(-1, hidden.shape[-1])  # (1, nnz_local, H) -> (nnz_local, H)
        offset = self.sp_rank * hidden.shape[0]  # this rank's slice starts here in the packed row
        pooled = []
        for index, weight in ((p.prompt_index, p.prompt_weight), (p.response_index, p.response_weight)):
            part = pool_at_positions(hidden, index.to(hidden.device), weight.to(hidden.device), offset=offset)
            if self.sp_size > 1:  # each rank summed only the pooled positions it holds
                torch.distributed.all_reduce(part, group=self.sp_group)
            pooled.append(part)
        self.prompt_features, self.response_features = pooled
