"""The timed forward through verl's own engine: the old-log-prob call a user's actor makes.

GRPO/DAPO's actor runs verl's ``FSDPEngineWithLMHead``; POISE's runs
:class:`poise_verl.verl_ext.capture_engine.PoiseFSDPEngine`, the same engine whose ``forward_step`` also pools
one decoder layer when the micro-batch carries the capture flag. Both are built here, in this process, on a
one-rank process group (gloo on the CPU, NCCL on a GPU), FSDP2, remove-padding, around the same weights (the
hand-written path's model, saved to a temporary folder), and called with ``infer_batch`` on the same batch.

verl 0.9.1 imports Ray (``verl.protocol``) and transfer_queue when its engine module is imported, so a machine
without them cannot take this path: :func:`prepare` says why and the check times the hand-written forward.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # importing poise_verl imports verl, which must wait for prepare()
    from benchmarks.gpu_check.packed_forward import MicroBatch
    from benchmarks.gpu_check.settings import Settings

# verl's own variables: the platform to use, and the modules its __init__ imports first (this project's CPU
# plugin registers the platform "cpu" and verl's FSDP engines for it; see poise_verl.verl_ext.cpu).
CPU_PLATFORM = {"VERL_PLATFORM": "cpu"}  # the plugins themselves load through the package's verl.plugins entry points


def prepare(device: str) -> str | None:
    """Ready this process for verl's FSDP engine; returns None, or why verl's engine cannot run here.

    Call it before anything imports verl, ``poise_verl`` included (it imports verl where verl is installed):
    verl picks its platform once, when first imported.
    """
    if importlib.util.find_spec("verl") is None:
        return "verl is not installed"
    if device == "cpu":
        os.environ.setdefault("VERL_PLATFORM", CPU_PLATFORM["VERL_PLATFORM"])
    try:
        import verl.workers.engine.fsdp.transformer_impl  # noqa: F401

        import poise_verl.verl_ext.capture_engine  # noqa: F401
    except Exception as error:  # noqa: BLE001  (any import failure means: time the hand-written forward)
        return f"verl's engine does not import here ({type(error).__name__}: {error})"
    if not torch.distributed.is_initialized():
        with socket.socket() as probe:  # a free port for the one-rank group
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        if device.startswith("cuda"):
            torch.cuda.set_device(0)
        torch.distributed.init_process_group("gloo" if device == "cpu" else "nccl", rank=0, world_size=1)
    return None


def attention_implementation(device: str) -> str:
    """What a run on this device uses: flash-attention 2 on a GPU that has it (verl's default), else sdpa."""
    has_flash = importlib.util.find_spec("flash_attn") is not None
    return "flash_attention_2" if device.startswith("cuda") and has_flash else "sdpa"


@dataclasses.dataclass
class Engines:
    plain: object  # verl's FSDPEngineWithLMHead: what GRPO/DAPO's actor runs
    poise: object  # PoiseFSDPEngine: what POISE's actor runs
    folder: str  # the saved weights both loaded
    attention: str

    def close(self) -> None:
        self.plain = self.poise = None
        shutil.rmtree(self.folder, ignore_errors=True)


def build_engines(model, settings: Settings) -> Engines:
    """Both engines around ``model``'s weights, as an actor worker builds its engine (not forward-only)."""
    from verl.trainer.config import CheckpointConfig
    from verl.workers.config import FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    from poise_verl.verl_ext.capture_engine import PoiseFSDPEngine

    folder = tempfile.mkdtemp(prefix="gpu_check_model_")
    model.save_pretrained(folder)
    attention = attention_implementation(settings.device)
    compute = "fp32" if settings.dtype == torch.float32 else "bf16"

    def build(engine_class):
        model_config = HFModelConfig(
            path=folder,
            use_remove_padding=True,
            override_config={"attn_implementation": attention},
            enable_gradient_checkpointing=False,
            load_tokenizer=False,
        )
        precision = {"param_dtype": compute, "reduce_dtype": "fp32", "buffer_dtype": "fp32"}
        engine_config = FSDPEngineConfig(strategy="fsdp2", mixed_precision=precision)
        engine_config.use_remove_padding = True
        engine = engine_class(
            model_config=model_config,
            engine_config=engine_config,
            optimizer_config=FSDPOptimizerConfig(lr=1e-6),
            checkpoint_config=CheckpointConfig(),
        )
        engine.initialize()
        return engine

    return Engines(build(FSDPEngineWithLMHead), build(PoiseFSDPEngine), folder, attention)


def verl_batch(micro_batches: list[MicroBatch], settings: Settings):
    """The hand-written path's sequences as the trainer hands them to the actor: a left-padded prompt and a
    right-padded response per row, converted to verl's nested no-padding TensorDict, micro-batches of
    ``settings.micro_batch_sequences`` rows (the same split as the packed micro-batches)."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    sequences = []
    for micro in micro_batches:
        row = micro.input_ids[0].cpu()
        for index, response in enumerate(micro.response_lengths.tolist()):
            tokens = row[micro.boundaries[index] : micro.boundaries[index + 1]]
            sequences.append((tokens[: len(tokens) - response], tokens[len(tokens) - response :]))
    prompt_width = max(len(p) for p, _ in sequences)
    width = prompt_width + max(len(r) for _, r in sequences)
    input_ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, (prompt, response) in enumerate(sequences):
        start, end = prompt_width - len(prompt), prompt_width + len(response)
        input_ids[i, start:end] = torch.cat([prompt, response])
        mask[i, start:end] = 1
    data = TensorDict(
        {
            "input_ids": input_ids,
            "attention_mask": mask,
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
            "responses": input_ids[:, prompt_width:],
            "response_mask": mask[:, prompt_width:],
        },
        batch_size=len(sequences),
    )
    data = left_right_2_no_padding(data)
    tu.assign_non_tensor(
        data,
        use_remove_padding=True,
        use_dynamic_bsz=False,
        micro_batch_size_per_gpu=settings.micro_batch_sequences,
        temperature=1.0,
        calculate_entropy=True,
        use_fused_kernels=False,
    )
    return data


def capture_flags(settings: Settings, cut_token: int | None) -> dict:
    """What the POISE trainer sets on the old-log-prob batch (``cut_token``: the one-token end-of-thinking marker)."""
    from poise_verl.verl_ext import capture_engine as ce

    return {
        ce.CAPTURE_LAYER_KEY: settings.capture_layer,
        ce.POOL_K_KEY: settings.pool_tokens,
        ce.RESPONSE_CUT_MARKER_KEY: () if cut_token is None else (cut_token,),
    }


def _flat(value: torch.Tensor) -> torch.Tensor:
    return value.values() if value.is_nested else value.reshape(-1)


def _rows(value: torch.Tensor) -> torch.Tensor:
    return torch.stack(list(value.unbind())) if value.is_nested else value


def infer(engine, data, flags: dict):
    """``infer_batch`` as the actor calls it for old log-probs: per-token log-probs and entropies ``(N,)`` of
    the packed row and, with the capture flags, the pooled ``(B, H)`` prompt and response rows."""
    from verl.utils import tensordict_utils as tu

    from poise_verl.verl_ext import capture_engine as ce

    if flags:
        tu.assign_non_tensor(data, **flags)
    with engine.eval_mode():
        output = engine.infer_batch(data, loss_function=None)["model_output"]
    features = None
    if flags:
        features = (_rows(output[ce.PROMPT_FEATURES]), _rows(output[ce.RESPONSE_FEATURES]))
    return _flat(output["log_probs"]).cpu(), _flat(output["entropy"]).cpu(), features


def conditions(engines: Engines, micro_batches: list[MicroBatch], settings: Settings) -> dict[str, Callable]:
    """The timed conditions: each, called untimed, builds a fresh batch and returns the call to time."""
    flags = capture_flags(settings, settings.end_of_thinking_id)

    def condition(engine, condition_flags):
        def prepare():
            data = verl_batch(micro_batches, settings)
            return lambda: infer(engine, data, condition_flags)

        return prepare

    return {
        "without": condition(engines.plain, {}),
        "with": condition(engines.poise, flags),
        "poise_engine_flag_off": condition(engines.poise, {}),
    }
