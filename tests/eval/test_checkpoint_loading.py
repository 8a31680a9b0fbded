"""Loading a verl FSDP checkpoint step folder gives the same model as the HF directory it came from."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, AutoTokenizer

from poise_verl.analysis.policy import CheckpointError, load_policy, resolve_checkpoint


def write_verl_checkpoint(model, tokenizer, step_dir: Path, store: Path) -> Path:
    """Save ``model`` as verl 0.9.1's FSDP checkpoint manager does with world size 1.

    ``actor/model_world_size_1_rank_0.pt``: the FSDP2 sharded state dict, every parameter a DTensor
    (Shard(0) on a one-rank mesh); ``actor/huggingface/``: config, generation config and tokenizer, no
    weights; ``actor/fsdp_config.json``.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    actor = step_dir / "actor"
    (actor / "huggingface").mkdir(parents=True)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,), mesh_dim_names=("fsdp",))
        state = {
            key: distribute_tensor(value.detach(), mesh, [Shard(0)])
            for key, value in model.state_dict().items()
        }
        torch.save(state, actor / "model_world_size_1_rank_0.pt")
    finally:
        dist.destroy_process_group()
    model.config.save_pretrained(actor / "huggingface")
    model.generation_config.save_pretrained(actor / "huggingface")
    tokenizer.save_pretrained(actor / "huggingface")
    (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 1}))
    return step_dir


@pytest.fixture(scope="module")
def trained_pair(small_tiny_assets, tmp_path_factory):
    """A perturbed copy of the tiny policy saved both as a HF directory and as a verl step folder."""
    root = tmp_path_factory.mktemp("checkpoints")
    model = AutoModelForCausalLM.from_pretrained(small_tiny_assets / "model")
    tokenizer = AutoTokenizer.from_pretrained(small_tiny_assets / "model")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # weights that differ from the build's, so only a real load can match them
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(root / "hf")
    tokenizer.save_pretrained(root / "hf")
    step = write_verl_checkpoint(model, tokenizer, root / "global_step_7", root / "store")
    return root / "hf", step


def test_verl_step_folder_gives_the_same_logits(trained_pair, small_tiny_assets):
    hf_dir, step_dir = trained_pair
    hf_model, tokenizer, hf_layout = load_policy(hf_dir)
    verl_model, verl_tokenizer, verl_layout = load_policy(step_dir)
    assert (hf_layout.kind, verl_layout.kind) == ("hf", "verl")
    assert verl_tokenizer.get_vocab() == tokenizer.get_vocab()
    input_ids = torch.tensor([tokenizer("<|im_start|>12+34=43</think>\\boxed{46}")["input_ids"]])
    with torch.no_grad():
        expected = hf_model(input_ids=input_ids).logits
        got = verl_model(input_ids=input_ids).logits
        original = AutoModelForCausalLM.from_pretrained(small_tiny_assets / "model")(
            input_ids=input_ids
        ).logits
    assert torch.equal(got, expected)
    assert not torch.allclose(got, original)  # the weights came from the rank file, not the build
    # The actor folder itself is accepted too.
    assert resolve_checkpoint(step_dir / "actor").kind == "verl"


def test_eval_of_step_folder_matches_hf_dir(trained_pair, small_tiny_assets, tmp_path):
    from poise_verl.eval import main

    hf_dir, step_dir = trained_pair
    common = [
        "--data",
        str(small_tiny_assets / "data" / "val.parquet"),
        "--limit",
        "3",
        "--k",
        "2",
        "--max-new-tokens",
        "6",
        "--threads",
        "2",
        "--no-progress",
        "--seed",
        "3",
    ]
    main([str(hf_dir), "--output", str(tmp_path / "hf"), *common])
    main([str(step_dir), "--output", str(tmp_path / "verl"), *common])
    hf = json.loads((tmp_path / "hf" / "summary.json").read_text())
    verl = json.loads((tmp_path / "verl" / "summary.json").read_text())
    assert hf["results"] == verl["results"]
    assert verl["settings"]["checkpoint_kind"] == "verl"


def test_sharded_checkpoint_points_to_the_merger(tmp_path):
    actor = tmp_path / "global_step_3" / "actor"
    (actor / "huggingface").mkdir(parents=True)
    (actor / "huggingface" / "config.json").write_text("{}")
    for rank in range(2):
        (actor / f"model_world_size_2_rank_{rank}.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="verl.model_merger merge --backend fsdp"):
        resolve_checkpoint(tmp_path / "global_step_3")
    # The command the message names exists in this environment's verl.
    assert importlib.util.find_spec("verl.model_merger") is not None


def test_a_run_folder_names_its_step_folders_and_the_last_whole_one(tmp_path):
    for step in (10, 2, 20):
        (tmp_path / f"global_step_{step}" / "actor").mkdir(parents=True)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("10")  # step 20 was cut short
    with pytest.raises(CheckpointError) as refused:
        resolve_checkpoint(tmp_path)
    message = str(refused.value)
    assert "holds the step folders global_step_2, global_step_10, global_step_20" in message, message
    assert f"e.g. {tmp_path / 'global_step_10'} (the last checkpoint written whole" in message
    (tmp_path / "latest_checkpointed_iteration.txt").unlink()
    with pytest.raises(CheckpointError, match=r"e\.g\. .*global_step_20 \(the highest step\)"):
        resolve_checkpoint(tmp_path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="neither a Hugging Face model directory"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "missing")
