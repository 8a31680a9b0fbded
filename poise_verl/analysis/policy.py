"""Load a policy for evaluation: a Hugging Face model directory or a verl FSDP checkpoint step folder.

Accepted paths:

- a HF model directory: ``config.json``, weights (``*.safetensors`` or ``pytorch_model*.bin``) and tokenizer;
- a verl step folder ``.../global_step_N`` (or its ``actor/`` sub-folder). verl 0.9.1's FSDP checkpoint
  manager writes, per rank, ``actor/model_world_size_{W}_rank_{r}.pt`` (the sharded state dict: DTensors
  for sharded parameters, plain tensors otherwise) and, on rank 0, ``actor/huggingface/`` with the model
  config, tokenizer and (when ``checkpoint.save_contents`` includes ``hf_model``) full HF weights.

  With ``W = 1`` the single rank file holds every parameter whole: each DTensor is materialised with
  ``full_tensor()`` (a no-op gather on a one-rank mesh; no process group needed) and loaded into a model
  built from ``actor/huggingface/config.json``. With ``W > 1`` the shards must be merged first; if
  ``actor/huggingface/`` already holds full weights they are used, otherwise the error message gives verl's
  merger command (``python -m verl.model_merger merge --backend fsdp ...``).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

_RANK_FILE = re.compile(r"model_world_size_(\d+)_rank_(\d+)\.pt$")
_HF_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


class CheckpointError(ValueError):
    """A checkpoint path that cannot be loaded; the message says what was found and what to do."""


@dataclass(frozen=True)
class CheckpointLayout:
    """Where a policy's pieces live.

    Attributes:
        kind: ``"hf"`` (a HF directory with weights) or ``"verl"`` (a verl FSDP rank file to load).
        hf_dir: directory with ``config.json`` and the tokenizer (for ``"verl"``: ``actor/huggingface``).
        rank_file: the world-size-1 rank file (``"verl"`` only).
    """

    kind: str
    hf_dir: Path
    rank_file: Path | None = None


def _has_hf_weights(directory: Path) -> bool:
    return (directory / "config.json").is_file() and any(
        any(directory.glob(pattern)) for pattern in _HF_WEIGHT_PATTERNS
    )


def resolve_checkpoint(path: str | Path) -> CheckpointLayout:
    """Decide what ``path`` is (see the module docstring) without loading any weights."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    if _has_hf_weights(path):
        return CheckpointLayout("hf", path)
    actor = path / "actor" if (path / "actor").is_dir() else path
    rank_files = sorted(p for p in actor.glob("model_world_size_*_rank_*.pt") if _RANK_FILE.search(p.name))
    if not rank_files:
        run_folder_hint = _run_folder_hint(path)
        if run_folder_hint:
            raise CheckpointError(run_folder_hint)
        raise CheckpointError(
            f"{path} is neither a Hugging Face model directory (config.json + *.safetensors/*.bin) nor a verl "
            "checkpoint step folder (actor/model_world_size_W_rank_R.pt + actor/huggingface/)"
        )
    hf_dir = actor / "huggingface"
    if not (hf_dir / "config.json").is_file():
        raise CheckpointError(
            f"verl checkpoint {actor}: {hf_dir}/config.json is missing (verl writes it on rank 0)"
        )
    world_sizes = {int(_RANK_FILE.search(p.name).group(1)) for p in rank_files}
    world_size = max(world_sizes)
    fsdp_config = actor / "fsdp_config.json"
    if fsdp_config.is_file():
        world_size = int(json.loads(fsdp_config.read_text()).get("world_size", world_size))
    if world_size == 1:
        return CheckpointLayout("verl", hf_dir, actor / "model_world_size_1_rank_0.pt")
    if _has_hf_weights(hf_dir):
        logger.info(
            "verl checkpoint saved with world size %d: using the full HF weights in %s", world_size, hf_dir
        )
        return CheckpointLayout("hf", hf_dir)
    raise CheckpointError(
        f"verl checkpoint {actor} is sharded over {world_size} ranks; merge it into a HF directory first:\n"
        f"  python -m verl.model_merger merge --backend fsdp --local_dir {actor} --target_dir {actor}/merged_hf\n"
        f"then pass {actor}/merged_hf. (Note: verl 0.9.1's merger writes bfloat16 weights.)"
    )


def _run_folder_hint(path: Path) -> str | None:
    """For a training run's folder (``trainer.default_local_dir``, which holds ``global_step_N`` folders): the
    message naming its step folders and the one to evaluate; None for any other folder.

    The suggestion is the step verl's tracker file names (the last checkpoint written whole), else the highest.
    """
    from poise_verl.verl_ext.checkpoint_guard import TRACKER_FILE, step_folders

    steps = step_folders(path)
    if not steps:
        return None
    tracker = path / TRACKER_FILE
    named = tracker.read_text().strip() if tracker.is_file() else ""
    by_step = dict(steps)
    latest = by_step.get(int(named)) if named.isdigit() else None
    why = "the last checkpoint written whole, as its tracker file says"
    if latest is None:
        latest, why = steps[-1][1], "the highest step"
    shown = ", ".join(child.name for _, child in steps[-8:])
    more = f" (and {len(steps) - 8} earlier)" if len(steps) > 8 else ""
    return (
        f"{path} is a training run's folder, not a model: it holds the step folders {shown}{more}. "
        f"Pass one of them, e.g. {latest} ({why})"
    )


def _plain_tensor(value) -> torch.Tensor:
    """A DTensor of a one-rank mesh -> its full tensor; plain tensors unchanged."""
    if hasattr(value, "full_tensor"):
        return value.full_tensor()
    return value


def load_verl_state_dict(rank_file: str | Path) -> dict[str, torch.Tensor]:
    """The whole-parameter state dict of a world-size-1 verl FSDP rank file.

    ``weights_only=False`` is required: verl pickles DTensors (with their device mesh). Only load
    checkpoints you trust.
    """
    raw = torch.load(rank_file, map_location="cpu", weights_only=False)
    state = {}
    for key, value in raw.items():
        # FSDP1 may leave its wrapper's name in the keys; the HF model knows the plain names.
        state[key.replace("_fsdp_wrapped_module.", "")] = _plain_tensor(value).detach()
    return state


def _load_verl_model(layout: CheckpointLayout, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(layout.hf_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = load_verl_state_dict(layout.rank_file)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied output embedding is the input embedding: absent from (or redundant in) the saved state.
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    if getattr(config, "tie_word_embeddings", False) or getattr(
        config.get_text_config(), "tie_word_embeddings", False
    ):
        tied |= {"lm_head.weight"}
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        raise CheckpointError(
            f"verl checkpoint {layout.rank_file} does not match the model of {layout.hf_dir}/config.json: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            " (a LoRA-only checkpoint must be merged with verl.model_merger first)"
        )
    if tied:
        model.tie_weights()
    return model


def load_policy(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """``(model, tokenizer, layout)`` for a HF directory or a verl step folder; the model is in eval mode.

    The generation config's pad/eos/bos ids are filled from the tokenizer where missing (a fresh
    ``GenerationConfig`` in transformers 5 leaves them None).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    layout = resolve_checkpoint(path)
    tokenizer = AutoTokenizer.from_pretrained(layout.hf_dir)
    if layout.kind == "hf":
        model = AutoModelForCausalLM.from_pretrained(layout.hf_dir, dtype=dtype)
    else:
        model = _load_verl_model(layout, dtype)
        if (layout.hf_dir / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(layout.hf_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = model.generation_config
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    if config.eos_token_id is None:
        config.eos_token_id = tokenizer.eos_token_id
    if config.bos_token_id is None and tokenizer.bos_token_id is not None:
        config.bos_token_id = tokenizer.bos_token_id
    model.to(device).eval()
    return model, tokenizer, layout


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every token that ends a response: the generation config's eos id(s) and the tokenizer's."""
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise CheckpointError("the model has no end-of-sequence token (generation_config.eos_token_id)")
    return ids
