"""Each training step's rollouts as POISE saw them, on disk (``poise.feature_dump_dir``; off by default).

With the key set, the POISE trainer writes ``<dir>/step_<N>.pt`` every step, right after verl's advantage stage
and before the probes see the batch: one entry per row of verl's batch, in its order (padding rows included,
``valid`` False), holding

- ``uids``, ``domains``, ``valid``: the prompt uid, probe domain and whether the row is a rollout that trains
  with a sibling (False on padding rows and on ``lone`` ones); ``lone``: a rollout whose siblings failed to
  generate (advantage 0, not in the replay buffer);
- ``prompt_ids``, ``response_ids``: the token ids the actor's old-log-prob pass ran on (lists of 1-D tensors);
- ``rewards`` ``(B,)``: R_i; ``prompt_features``, ``response_features`` ``(B, H)``: the pooled layer states
  captured in that pass; ``entropy_features`` ``(B, S)`` with ``entropy_feature_names``;
- ``predictions`` ``(B,)``: g(phi_i) from the probes fitted before this step; ``fitted``, ``from_probe``
  ``(B,)`` bool (False: RLOO for that row); ``advantages``: the per-token advantages verl's stage wrote;
- ``probe_rows`` ``{domain: rows}``: the buffer rows each domain's probe was last fitted on, at prediction time.
- ``rollout_log_probs`` (when ``actor_rollout_ref.rollout.calculate_log_probs``): the log-probs the rollout server
  gave each response token, from the weights that generated it (1-D tensors).

This is what a probe study offline needs (fit another probe on the same features, compare layers), and what the
tests compare against a plain transformers forward and against a probe refit on earlier steps. The folder is on
the node that runs verl's trainer (the driver's ``TaskRunner``). Files are written whole (a temporary name, then
renamed), so a reader never sees half a step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_step_dumps", "step_dump_path", "write_step_dump"]


def step_dump_path(folder: str | os.PathLike, step: int) -> Path:
    return Path(folder) / f"step_{int(step):06d}.pt"


def write_step_dump(folder: str | os.PathLike, step: int, record: dict[str, Any]) -> Path:
    """Write one step's record to ``folder/step_<step>.pt`` atomically; returns the path."""
    path = step_dump_path(folder, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"step": int(step), **record}, tmp)
    os.replace(tmp, path)
    return path


def load_step_dumps(folder: str | os.PathLike) -> dict[int, dict[str, Any]]:
    """``{step: record}`` of every step dump in ``folder``, in step order."""
    records = {}
    for path in sorted(Path(folder).glob("step_*.pt")):
        record = torch.load(path, weights_only=False)
        records[int(record["step"])] = record
    if not records:
        raise FileNotFoundError(f"no step_<N>.pt files in {folder} (was poise.feature_dump_dir set to it?)")
    return records
