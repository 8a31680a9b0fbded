"""Run verl's FSDP engine with POISE's capture on the tiny policy and compare against output_hidden_states.

Run by tests/verl_ext/test_capture_engine.py in a fresh process (it sets up a one-rank gloo process group
and verl's CPU platform, which must happen before verl is imported):

    VERL_PLATFORM=cpu python engine_capture_check.py OUT.json   (the plugins load through verl.plugins)

For each layout (packed = ``use_remove_padding=True``, padded = ``False``) it builds ``PoiseFSDPEngine`` (the
class the POISE launcher selects) around the tiny policy's architecture, runs the old-log-prob style
``infer_batch`` with the capture flag, and pools the same batch from a separate transformers forward with
``output_hidden_states=True`` in verl's left-padded-prompt / right-padded-response layout. The batch has short
prompts and responses (fewer than k tokens), several micro-batches, and end-of-thinking markers of one token
and of two to cut at.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile

import torch

LAYERS = (0, 2)  # not the last: transformers' last hidden_states entry is after the final norm, not the layer
K = 10
PROMPT_LENGTHS = [12, 7, 3, 11, 9, 10]
RESPONSE_LENGTHS = [16, 4, 12, 1, 9, 13]


def make_batch(tokenizer, seed: int = 0):
    rng = random.Random(seed)
    batch, prompt_width, response_width = len(PROMPT_LENGTHS), max(PROMPT_LENGTHS), max(RESPONSE_LENGTHS)
    pad, vocab = tokenizer.pad_token_id, len(tokenizer)
    input_ids = torch.full((batch, prompt_width + response_width), pad)
    attention_mask = torch.zeros_like(input_ids)
    for i, (p, r) in enumerate(zip(PROMPT_LENGTHS, RESPONSE_LENGTHS)):
        start, end = prompt_width - p, prompt_width + r
        input_ids[i, start:end] = torch.tensor([rng.randrange(5, vocab) for _ in range(p + r)])
        attention_mask[i, start:end] = 1
    think = tokenizer.convert_tokens_to_ids("</think>")
    # Sample 0: one </think> mid-response; sample 2: two (the pool ends at the last one).
    input_ids[0, prompt_width + 6] = think
    input_ids[2, prompt_width + 2] = think
    input_ids[2, prompt_width + 8] = think
    # A marker of two tokens (how a tokenizer without a </think> token writes it): in samples 4 and 5, twice in 5;
    # sample 3 ends its prompt with the first token and starts its response with the second, which is no marker.
    two = tuple(tokenizer.encode("=(", add_special_tokens=False))
    for sample, start in ((4, 2), (5, 1), (5, 7)):
        input_ids[sample, prompt_width + start : prompt_width + start + 2] = torch.tensor(two)
    input_ids[3, prompt_width - 1], input_ids[3, prompt_width] = two
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids, prompt_width, think, two


def infer(engine, batch, remove_padding: bool, flags: dict):
    """verl's forward-only ``infer_batch`` on the left/right-padded batch, converted as verl's trainer does."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    input_ids, attention_mask, position_ids, prompt_width = batch
    data = TensorDict(
        {
            "input_ids": input_ids.clone(),
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "responses": input_ids[:, prompt_width:],
            "response_mask": attention_mask[:, prompt_width:],
        },
        batch_size=input_ids.shape[0],
    )
    data = left_right_2_no_padding(data)
    tu.assign_non_tensor(
        data,
        use_remove_padding=remove_padding,
        use_dynamic_bsz=False,
        micro_batch_size_per_gpu=2,  # three micro-batches
        temperature=1.0,
        calculate_entropy=True,
        use_fused_kernels=False,
        **flags,
    )
    with engine.eval_mode():
        return engine.infer_batch(data, loss_function=None)["model_output"]


def _pooling_reference():
    """tests/pooling_reference.py, loaded by path: this script runs outside pytest, without tests/ on sys.path."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "pooling_reference.py"
    spec = importlib.util.spec_from_file_location("pooling_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    os.environ.setdefault("MASTER_PORT", str(20000 + os.getpid() % 20000))
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM
    from verl.trainer.config import CheckpointConfig
    from verl.workers.config import FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig
    from verl.workers.engine.base import EngineRegistry

    reference = _pooling_reference()
    pool_padded, response_cut_at_last_marker = reference.pool_padded, reference.response_cut_at_last_marker
    from poise_verl.tiny.model import make_model
    from poise_verl.tiny.tokenizer import build_tokenizer
    from poise_verl.verl_ext import capture_engine as ce

    dist.init_process_group("gloo", rank=0, world_size=1)
    torch.manual_seed(0)
    model_dir = tempfile.mkdtemp(prefix="poise_capture_")
    tokenizer = build_tokenizer()
    make_model(tokenizer, seed=0).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    input_ids, attention_mask, position_ids, prompt_width, think, two = make_batch(tokenizer)
    responses, response_mask = input_ids[:, prompt_width:], attention_mask[:, prompt_width:]
    reference_model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa", dtype=torch.float32)
    with torch.no_grad():
        hidden_states = reference_model.eval()(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, output_hidden_states=True
        ).hidden_states
    # The response pool's length per marker: none (the whole response), </think>, and the two-token marker.
    markers = {"none": (), "one_token": (think,), "two_tokens": two}
    cuts = {name: response_cut_at_last_marker(responses, response_mask, marker) for name, marker in markers.items()}

    results = {"engines": {}, "cases": []}
    for remove_padding in (True, False):
        model_config = HFModelConfig(
            path=model_dir,
            use_remove_padding=remove_padding,
            override_config={"attn_implementation": "sdpa"},
            enable_gradient_checkpointing=False,
        )
        fp32 = {"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"}
        engine_config = FSDPEngineConfig(strategy="fsdp2", mixed_precision=fp32)
        engine_config.use_remove_padding = remove_padding
        # The registry lookup the workers do, with the launcher's VERL_ENGINE_VENDOR=poise.
        engine = EngineRegistry.new(
            model_type="language_model",
            backend="fsdp2",
            model_config=model_config,
            engine_config=engine_config,
            optimizer_config=FSDPOptimizerConfig(lr=1e-6),
            checkpoint_config=CheckpointConfig(),
        )
        results["engines"][str(remove_padding)] = type(engine).__name__
        engine.initialize()

        # No flag (the reference model's pass, validation): nothing captured.
        batch = (input_ids, attention_mask, position_ids, prompt_width)
        plain = infer(engine, batch, remove_padding, {})
        results["cases"].append(
            {"remove_padding": remove_padding, "flag": False, "keys": sorted(plain.keys())}
        )
        for layer in LAYERS:
            for marker_name, marker in markers.items():
                flags = {ce.CAPTURE_LAYER_KEY: layer, ce.POOL_K_KEY: K, ce.RESPONSE_CUT_MARKER_KEY: marker}
                output = infer(engine, batch, remove_padding, flags)
                want = pool_padded(hidden_states[layer + 1], attention_mask, prompt_width, K, cuts[marker_name])
                got = {}
                for name, key in (("prompt", ce.PROMPT_FEATURES), ("response", ce.RESPONSE_FEATURES)):
                    value = output[key]
                    got[name] = torch.stack(list(value.unbind())) if value.is_nested else value
                case = {"remove_padding": remove_padding, "flag": True, "layer": layer, "marker": marker_name}
                for name in ("prompt", "response"):
                    reference = getattr(want, name)
                    case[f"{name}_max_abs_diff"] = (got[name] - reference).abs().max().item()
                    case[f"{name}_mean_abs"] = reference.abs().mean().item()
                    case[f"{name}_shape"] = list(got[name].shape)
                # What a wrong pool would give: the response pool without the cut, or with the </think> cut.
                other_cut = cuts["one_token" if marker_name == "none" else "none"]
                other = pool_padded(hidden_states[layer + 1], attention_mask, prompt_width, K, other_cut)
                case["response_diff_to_other_cut"] = (got["response"] - other.response).abs().max().item()
                case["log_probs_finite"] = bool(torch.isfinite(output["log_probs"].values()).all())
                results["cases"].append(case)
        del engine
    with open(out_path, "w") as handle:
        json.dump(results, handle, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
