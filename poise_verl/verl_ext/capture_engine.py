"""Feature capture inside the actor's old-log-prob forward pass.

POISE's features come from the forward pass the actor runs anyway to compute old log-probs: no second pass.
:class:`PoiseFSDPEngine` is verl's own ``FSDPEngineWithLMHead`` with one change: when the micro-batch carries
``poise_capture_layer`` (set by the POISE trainer for the old-log-prob pass only), a forward hook on that
decoder layer pools the last-k prompt and last-k response positions of the packed (remove-padding) row, or of
the right-padded rows verl builds without remove-padding (:class:`poise_verl.core.capture.PackedPoolingHook`),
and the pooled rows are added to ``model_output``. verl returns
every key of ``model_output`` to the caller, so the features travel back with the old log-probs.

The reference model's pass and the training passes run the same ``forward_step`` but never carry the flag
(and training passes are not forward-only), so they capture nothing.

Selected through verl's engine registry: the class is registered under vendor ``poise`` for cuda, npu and
cpu devices, and ``VERL_ENGINE_VENDOR=poise`` in the workers' environment picks it (the POISE launcher sets
it). Pooling happens inside the hook, so only ``(B, H)`` pooled rows outlive the layer's output.

Ulysses sequence parallelism: each rank holds a contiguous slice of the packed row after the layer, so each
rank pools the positions it holds and the partial sums are all-reduced over the sequence-parallel group.
"""

from __future__ import annotations

import torch
from verl.utils import tensordict_utils as tu
from verl.workers.engine.base import EngineRegistry
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

from poise_verl.config import POISE_ENGINE_VENDOR, probe_layer_problem
from poise_verl.core.capture import PackedPoolingHook, decoder_layers
from poise_verl.core.pooling import response_cut_at_last_marker_packed

CAPTURE_LAYER_KEY = "poise_capture_layer"
POOL_K_KEY = "poise_pool_k"
# The end-of-thinking marker's token ids the response pool ends at, a tuple (verl's empty-batch path turns a list in a
# batch's extra_info into per-row data: transferqueue_utils._async_meta_to_realdata); (): no cut, pool the end.
RESPONSE_CUT_MARKER_KEY = "poise_response_cut_marker"
PROMPT_FEATURES = "poise_prompt_features"
RESPONSE_FEATURES = "poise_response_features"


def _response_lengths(micro_batch) -> torch.Tensor:
    """``(B,)`` response length per sample from verl's nested ``response_mask``."""
    response_mask = micro_batch["response_mask"]
    if response_mask.is_nested:
        return response_mask.offsets().diff().to(torch.long)
    return response_mask.sum(dim=-1).to(torch.long)


@EngineRegistry.register(
    model_type="language_model",
    backend=["fsdp", "fsdp2"],
    device=["cuda", "npu", "cpu"],
    vendor=POISE_ENGINE_VENDOR,
)
class PoiseFSDPEngine(FSDPEngineWithLMHead):
    """verl's FSDP language-model engine plus POISE's hidden-state capture in forward-only passes."""

    def forward_step(self, micro_batch, loss_function, forward_only):
        layer_index = tu.get_non_tensor_data(data=micro_batch, key=CAPTURE_LAYER_KEY, default=None)
        if layer_index is None or not forward_only:
            return super().forward_step(micro_batch, loss_function=loss_function, forward_only=forward_only)

        # Without remove-padding verl runs the model on right-padded (B, S) rows built from the same nested batch.
        right_padded = not tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True)
        layers = decoder_layers(self.module)
        problem = probe_layer_problem(int(layer_index), len(layers), "the actor's model")
        if problem:
            raise ValueError(problem)
        k = int(tu.get_non_tensor_data(data=micro_batch, key=POOL_K_KEY, default=10))
        sp_size = self.ulysses_sequence_parallel_size
        sp_rank, sp_group = 0, None
        if sp_size > 1:
            from verl.utils.ulysses import get_ulysses_sequence_parallel_group

            sp_group = get_ulysses_sequence_parallel_group()
            sp_rank = torch.distributed.get_rank(group=sp_group)
        cu_seqlens = micro_batch["input_ids"].offsets().to(torch.long)
        response_lengths = _response_lengths(micro_batch)
        marker = tuple(tu.get_non_tensor_data(data=micro_batch, key=RESPONSE_CUT_MARKER_KEY, default=()))
        # Official POISE: the response pool ends at the response's last end-of-thinking marker, when present.
        response_pool_lengths = response_cut_at_last_marker_packed(
            micro_batch["input_ids"].values(), cu_seqlens, response_lengths, marker
        )
        hook = PackedPoolingHook(
            cu_seqlens=cu_seqlens,
            response_lengths=response_lengths,
            k=k,
            response_pool_lengths=response_pool_lengths,
            sp_rank=sp_rank,
            sp_size=sp_size,
            sp_group=sp_group,
            right_padded=right_padded,
        )
        handle = layers[int(layer_index)].register_forward_hook(hook)
        try:
            loss, output = super().forward_step(
                micro_batch, loss_function=loss_function, forward_only=forward_only
            )
        finally:
            handle.remove()
        if hook.prompt_features is None:
            raise RuntimeError(
                f"poise feature capture: decoder layer {layer_index} did not run in this forward"
            )
        output["model_output"][PROMPT_FEATURES] = hook.prompt_features.cpu()
        output["model_output"][RESPONSE_FEATURES] = hook.response_features.cpu()
        return loss, output
