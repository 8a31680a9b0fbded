"""Replay buffer: whole-group FIFO eviction per domain, fallback domain, checkpoints."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from poise_verl.config import default_poise_settings
from poise_verl.core.buffer import ProbeReplayBuffer

# The Hydra tree's capacities (the official ones).
OFFICIAL = dict(default_poise_settings().buffer.capacity)


def group(uid, rows, hp=3, hr=4, s=2):
    """Rows whose values encode the uid, so the dataset can be traced back."""
    value = float(abs(hash(uid)) % 1000)
    return {
        "uid": uid,
        "prompt_feats": torch.full((rows, hp), value),
        "response_feats": torch.full((rows, hr), value) + torch.arange(rows).unsqueeze(1),
        "scalar_feats": torch.full((rows, s), value),
        "targets": torch.rand(rows),
    }


def reference_fifo(events, capacity, fallback="other"):
    """Loop reference: events = [(uid, domain, rows)], returns {domain: [uids kept, oldest first]}."""
    kept = {domain: [] for domain in capacity}
    for uid, domain, rows in events:
        stored = domain if domain in capacity else fallback
        kept[stored].append((uid, rows))
        while sum(r for _, r in kept[stored]) > capacity[stored]:
            kept[stored].pop(0)
    return {domain: [uid for uid, _ in groups] for domain, groups in kept.items()}


@pytest.mark.parametrize("seed", range(6))
def test_eviction_matches_fifo_reference(seed):
    rng = np.random.default_rng(seed)
    capacity = {"math": 12, "code": 9, "other": 7}
    buffer = ProbeReplayBuffer(capacity)
    events = []
    for step in range(40):
        uid = f"g{step}"
        domain = str(rng.choice(["math", "code", "other", "science"]))  # science -> other
        rows = int(rng.integers(2, 6))
        events.append((uid, domain, rows))
        data = group(uid, rows)
        buffer.add_group(
            uid, domain, data["prompt_feats"], data["response_feats"], data["scalar_feats"], data["targets"]
        )
        for stored, rows_held in buffer.num_rows_by_domain.items():
            assert rows_held <= capacity[stored]
    expected = reference_fifo(events, capacity)
    rows_of = {uid: rows for uid, _, rows in events}
    for domain, uids in expected.items():
        data = buffer.dataset([domain])
        assert data.uids == [uid for uid in uids for _ in range(rows_of[uid])]  # oldest first, whole groups
        assert buffer.num_rows_by_domain[domain] == sum(rows_of[uid] for uid in uids)
    assert buffer.num_rows == sum(buffer.num_rows_by_domain.values()) == buffer.dataset().num_rows


def test_add_groups_splits_a_shuffled_batch_by_uid():
    buffer = ProbeReplayBuffer({"math": 100, "other": 100})
    uids = np.array(["b", "a", "b", "c", "a", "c"], dtype=object)
    domains = np.array(["math", "code", "math", "math", "code", "math"], dtype=object)
    prompt = torch.arange(6).float().unsqueeze(1).repeat(1, 3)
    response = torch.arange(6).float().unsqueeze(1).repeat(1, 4)
    scalar = torch.zeros(6, 2)
    targets = torch.arange(6).float() / 10
    buffer.add_groups(prompt, response, scalar, targets, uids, domains)
    math = buffer.dataset(["math"])
    assert math.uids == ["b", "b", "c", "c"]  # first appearance order, rows in batch order
    assert math.prompt_feats[:, 0].tolist() == [0.0, 2.0, 3.0, 5.0]
    other = buffer.dataset(["other"])  # "code" is not in the table: stored under "other"
    assert other.uids == ["a", "a"] and other.targets.tolist() == pytest.approx([0.1, 0.4])
    assert buffer.storage_domain("code") == "other"
    full = buffer.dataset()
    assert full.domains == ["math"] * 4 + ["other"] * 2
    assert full.prompt_feats.shape == (6, 3) and full.scalar_feats.shape == (6, 2)


def test_defaults_and_errors():
    assert (
        ProbeReplayBuffer(OFFICIAL).capacity_by_domain
        == OFFICIAL
        == {"math": 4096, "code": 3072, "other": 3072}
    )
    with pytest.raises(ValueError, match="fallback_domain"):
        ProbeReplayBuffer({"math": 10})
    with pytest.raises(ValueError, match=">= 1 row"):
        ProbeReplayBuffer({"math": 0, "other": 5})
    buffer = ProbeReplayBuffer({"math": 4, "other": 4})
    data = group("big", 5)
    with pytest.raises(ValueError, match="at most 4"):
        buffer.add_group(
            "big", "math", data["prompt_feats"], data["response_feats"], data["scalar_feats"], data["targets"]
        )
    with pytest.raises(ValueError, match="spans several domains"):
        buffer.add_groups(
            torch.zeros(2, 3),
            torch.zeros(2, 4),
            torch.zeros(2, 2),
            torch.zeros(2),
            np.array(["u", "u"], dtype=object),
            np.array(["math", "code"], dtype=object),
        )
    small = group("x", 2)
    buffer.add_group(
        "x", "math", small["prompt_feats"], small["response_feats"], small["scalar_feats"], small["targets"]
    )
    with pytest.raises(ValueError, match="feature sizes"):
        buffer.add_group("y", "math", torch.zeros(2, 9), torch.zeros(2, 4), torch.zeros(2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="unknown domain"):
        buffer.dataset(["chemistry"])


def test_empty_dataset_has_the_right_widths():
    buffer = ProbeReplayBuffer(OFFICIAL)
    assert buffer.dataset().num_rows == 0
    data = group("g", 2)
    buffer.add_group(
        "g", "code", data["prompt_feats"], data["response_feats"], data["scalar_feats"], data["targets"]
    )
    empty = buffer.dataset(["math"])
    assert empty.prompt_feats.shape == (0, 3) and empty.response_feats.shape == (0, 4)


def test_state_round_trip():
    buffer = ProbeReplayBuffer({"math": 10, "code": 6, "other": 5})
    for step in range(12):
        data = group(f"g{step}", 2 + step % 3)
        buffer.add_group(
            f"g{step}",
            ["math", "code", "poetry"][step % 3],
            data["prompt_feats"],
            data["response_feats"],
            data["scalar_feats"],
            data["targets"],
        )
    stream = io.BytesIO()
    torch.save(buffer.state_dict(), stream)
    stream.seek(0)
    restored = ProbeReplayBuffer({"other": 1})  # other capacities; the checkpoint brings its own
    restored.load_state_dict(torch.load(stream, weights_only=True))
    assert restored.capacity_by_domain == buffer.capacity_by_domain
    assert restored.num_rows_by_domain == buffer.num_rows_by_domain
    before, after = buffer.dataset(), restored.dataset()
    for field in ("prompt_feats", "response_feats", "scalar_feats", "targets"):
        assert torch.equal(getattr(before, field), getattr(after, field))
    assert before.uids == after.uids and before.domains == after.domains
    # Eviction keeps working identically after the restore.
    data = group("new", 4)
    args = (
        "new",
        "math",
        data["prompt_feats"],
        data["response_feats"],
        data["scalar_feats"],
        data["targets"],
    )
    assert buffer.add_group(*args) == restored.add_group(*args)
    assert buffer.dataset().uids == restored.dataset().uids
