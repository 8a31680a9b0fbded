"""A vLLM worker extension for verl's weight sync on vLLM's CPU platform.

verl's ``vLLMColocateWorkerExtension.update_weights_from_ipc`` loads the actor's tensors with
``model.load_weights`` and then runs vLLM's ``process_weights_after_loading``. On the CPU platform, vLLM's
``UnquantizedLinearMethod.process_weights_after_loading`` (``vllm/model_executor/layers/linear.py:206-216``)
calls ``dispatch_cpu_unquantized_gemm(layer, remove_weight=True)`` (``layers/utils.py:466``): the weight is
packed into a oneDNN / sgl-kernel handle and ``layer.weight`` is replaced by an empty ``Parameter`` with no
``weight_loader``. Every later ``load_weights`` then fails with
``AttributeError: 'Parameter' object has no attribute 'weight_loader'`` (``layers/linear.py:1341``).

vLLM has a per-layer switch that keeps the weight: a layer with ``_cpu_skip_gemm_dispatch = True`` gets
``cpu_linear = torch.nn.functional.linear`` and keeps ``layer.weight`` (``linear.py:209-212``). This extension,
before every sync, gives each linear layer whose weight was removed a fresh full-size weight through the layer's
own ``quant_method.create_weights`` (so it has vLLM's ``weight_loader`` again) and sets that switch. The packed
copy of the dummy start-up weights is dropped; verl syncs the actor's weights before the first generation
(``rollout.load_format=dummy`` already means the start-up weights are random). Embedding / lm_head layers keep
their weight on CPU (``remove_weight=False``) and are re-packed by ``process_weights_after_loading`` after each
sync, as vLLM does.

Selected with ``actor_rollout_ref.rollout.engine_kwargs.vllm.worker_extension_cls=<this module>.CPUColocateWorkerExtension``
(verl spreads ``engine_kwargs.vllm`` over its own ``worker_extension_cls`` argument, ``vllm_async_server.py:361-385``).
"""
from __future__ import annotations

import logging

import torch
from verl.workers.rollout.vllm_rollout.utils import vLLMColocateWorkerExtension

logger = logging.getLogger(__name__)


def _restore_cpu_linear_weights(model: torch.nn.Module) -> int:
    from vllm.model_executor.layers.linear import (
        WEIGHT_LOADER_V2_SUPPORTED,
        LinearBase,
        ReplicatedLinear,
        UnquantizedLinearMethod,
    )

    restored = 0
    for module in model.modules():
        if not isinstance(module, LinearBase):
            continue
        quant_method = getattr(module, "quant_method", None)
        if not isinstance(quant_method, UnquantizedLinearMethod):
            continue
        weight = getattr(module, "weight", None)
        if weight is not None and weight.numel() > 0 and hasattr(weight, "weight_loader"):
            module._cpu_skip_gemm_dispatch = True  # keep it on later process_weights_after_loading
            continue
        device = weight.device if weight is not None else torch.device("cpu")
        if isinstance(module, ReplicatedLinear):
            input_size_per_partition = module.input_size
            weight_loader = module.weight_loader
        else:
            input_size_per_partition = module.input_size_per_partition
            weight_loader = (
                module.weight_loader_v2
                if quant_method.__class__.__name__ in WEIGHT_LOADER_V2_SUPPORTED
                else module.weight_loader
            )
        quant_method.create_weights(
            layer=module,
            input_size_per_partition=input_size_per_partition,
            output_partition_sizes=module.output_partition_sizes,
            input_size=module.input_size,
            output_size=module.output_size,
            params_dtype=module.params_dtype,
            weight_loader=weight_loader,
        )
        if module.weight.device != device:
            module.weight.data = module.weight.data.to(device)
        module._cpu_skip_gemm_dispatch = True
        module.cpu_linear = torch.nn.functional.linear
        restored += 1
    return restored


class CPUColocateWorkerExtension(vLLMColocateWorkerExtension):
    """verl's colocate worker extension, with vLLM CPU linear layers made reloadable before each sync."""

    def _make_cpu_weights_reloadable(self) -> None:
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return
        for model in self._iter_all_models():
            n = _restore_cpu_linear_weights(model)
            if n:
                logger.warning("restored %d CPU-packed linear weights to reloadable parameters", n)

    def monkey_patch_model(self, vocab_size: int, banned_token_ids=None):
        # verl calls this once through collective_rpc right after the engine starts (vllm_async_server.py:499).
        self._make_cpu_weights_reloadable()
        return super().monkey_patch_model(vocab_size, banned_token_ids)

    def update_weights_from_ipc(self, peft_config: dict | None = None, base_sync_done=False, use_shm: bool = False):
        # verl's weight sync loads into these weights: make them loadable again first.
        self._make_cpu_weights_reloadable()
        return super().update_weights_from_ipc(
            peft_config=peft_config, base_sync_done=base_sync_done, use_shm=use_shm
        )
