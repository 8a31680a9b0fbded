"""Checks on the per-step dumps a launch with ``poise.feature_dump_dir`` writes, shared by the trainer-mode tests.

- :func:`assert_rows_pair_with_their_siblings`: every uid has its n rows with one prompt, and the advantages
  verl's stage wrote are A_i = R_i - b_i with b_i the sibling's prediction (probe) or reward (RLOO);
- :func:`replay_probe_predictions`: each step's predictions against a probe refit offline, with the project's own
  buffer and probe code, on the replay buffer as it stood after the step before (and, as the control, after the
  step itself): the claim that the probes never see a batch before its advantages are fixed.
"""

from __future__ import annotations

import pandas as pd
import torch

from poise_verl.config import PoiseSettings, build_value_probe
from poise_verl.core.buffer import ProbeReplayBuffer
from poise_verl.core.cross_rollout import sibling_targets
from poise_verl.core.domain_probes import DomainProbes


def assert_rows_pair_with_their_siblings(config, steps: dict[int, dict]) -> None:
    from transformers import AutoTokenizer

    n = int(config.actor_rollout_ref.rollout.n)
    contents = {messages[0]["content"] for messages in pd.read_parquet(config.data.train_files)["prompt"]}
    tokenizer = AutoTokenizer.from_pretrained(config.actor_rollout_ref.model.path)
    for step, record in steps.items():
        rows_of: dict[str, list[int]] = {}
        for row, (uid, keep) in enumerate(zip(record["uids"], record["valid"].tolist(), strict=True)):
            if keep:
                rows_of.setdefault(uid, []).append(row)
        assert all(len(rows) == n for rows in rows_of.values()), (step, rows_of)
        for first, sibling in rows_of.values():
            assert torch.equal(record["prompt_ids"][first], record["prompt_ids"][sibling])
            prompt = tokenizer.decode(record["prompt_ids"][first], skip_special_tokens=True)
            assert prompt in contents, (step, prompt)
            for i, j in ((first, sibling), (sibling, first)):
                baseline = record["predictions"][j] if bool(record["from_probe"][j]) else record["rewards"][j]
                advantage = record["advantages"][i]
                assert torch.allclose(advantage, (record["rewards"][i] - baseline).expand_as(advantage), atol=1e-6)


def replay_probe_predictions(config, steps: dict[int, dict]) -> tuple[int, float]:
    """Assert that each step's predictions equal a probe refit on the buffer after the steps before it.

    Returns ``(steps compared, largest difference to a probe that had also seen the step's own rows)``: the
    caller asserts that difference is large, i.e. that the comparison can tell the two orders apart.
    """
    torch.set_num_threads(1)  # the probe worker's thread count on the CPU platform
    settings = PoiseSettings.from_config(config.poise)
    domains = list(settings.buffer.capacity)

    def buffer_after(records) -> ProbeReplayBuffer:
        """The replay buffer after pushing these steps' real rows, as the trainer's _issue_refit does."""
        buffer = ProbeReplayBuffer(dict(settings.buffer.capacity))
        for record in records:
            valid = record["valid"]
            uids = [uid for uid, keep in zip(record["uids"], valid.tolist(), strict=True) if keep]
            buffer.add_groups(
                record["prompt_features"][valid],
                record["response_features"][valid],
                record["entropy_features"][valid],
                sibling_targets(record["rewards"][valid], uids),
                uids,
                [d for d, keep in zip(record["domains"], valid.tolist(), strict=True) if keep],
            )
        return buffer

    def predict(buffer: ProbeReplayBuffer, record) -> torch.Tensor:
        probes = DomainProbes(domains, lambda: build_value_probe(settings.probe), settings.min_fit_rows)
        probes.refit(buffer.dataset())
        rows = record["fitted"]
        predictions, _ = probes.predict(
            record["prompt_features"][rows],
            record["response_features"][rows],
            record["entropy_features"][rows],
            [d for d, keep in zip(record["domains"], rows.tolist(), strict=True) if keep],
        )
        return predictions

    compared, largest_peeking_difference = 0, 0.0
    ordered = [steps[step] for step in sorted(steps)]
    for t, record in enumerate(ordered):
        if not bool(record["fitted"].any()):
            continue
        earlier = buffer_after(ordered[:t])
        assert record["probe_rows"] == earlier.num_rows_by_domain, (record["step"], record["probe_rows"])
        got = record["predictions"][record["fitted"]]
        assert torch.allclose(got, predict(earlier, record), atol=1e-4), record["step"]
        # What a probe that had also seen this step's rows would have predicted.
        peeking = predict(buffer_after(ordered[: t + 1]), record)
        largest_peeking_difference = max(largest_peeking_difference, float((got - peeking).abs().max()))
        compared += 1
    return compared, largest_peeking_difference
