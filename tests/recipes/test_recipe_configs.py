"""The GPU recipes (hydra_configs/recipe/) compose with either algorithm and hold the paper's settings.

Everything here runs without a GPU: Hydra composition, the project's and verl's own start-up validation, the
entry point's `--cfg job`, and the launcher's hardware check (which must refuse to start here).

The base config's tiny-task paths are `${poise_tiny:...}` interpolations, and Hydra dereferences an interpolated
value when a recipe merges over it, which builds the tiny model on first use (minutes of CPU training). The
`tiny_cache` fixture points POISE_VERL_CACHE at a directory that already looks built, so composing stays fast;
no recipe value depends on the tiny assets (test_recipe_needs_no_tiny_assets checks they are all overridden).
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "hydra_configs"
RECIPE_DIR = CONFIG_DIR / "recipe"

RECIPES = ["qwen3_4b", "deepseek_r1_distill_qwen_1_5b", "olmo3_7b_instruct_dpo"]
ALGOS = ["poise", "dapo"]
# Probe layer per recipe, and the model's decoder-layer count (config.json num_hidden_layers).
PROBE_LAYER = {"qwen3_4b": 19, "deepseek_r1_distill_qwen_1_5b": 15, "olmo3_7b_instruct_dpo": 7}
NUM_LAYERS = {"qwen3_4b": 36, "deepseek_r1_distill_qwen_1_5b": 28, "olmo3_7b_instruct_dpo": 32}
# Recipes whose layer is the official one of their own model; the others take Qwen3-4B's at the same depth.
OFFICIAL_LAYER = {"qwen3_4b", "olmo3_7b_instruct_dpo"}
MODEL_ID = {
    "qwen3_4b": "Qwen/Qwen3-4B",
    "deepseek_r1_distill_qwen_1_5b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    "olmo3_7b_instruct_dpo": "allenai/Olmo-3-7B-Instruct-DPO",
}
# The official feature-builder and estimator-fit configs per model profile: pooled tokens, PCA sizes (prompt,
# response), ridge alpha (holi-lab/POISE src/poise/config/*_qwen3_4b.json and *_olmo3_7b.json).
POOL_K = {"qwen3_4b": 10, "deepseek_r1_distill_qwen_1_5b": 10, "olmo3_7b_instruct_dpo": 32}
PCA_DIMS = {"qwen3_4b": (32, 64), "deepseek_r1_distill_qwen_1_5b": (32, 64), "olmo3_7b_instruct_dpo": (16, 128)}
RIDGE_ALPHA = {"qwen3_4b": 100.0, "deepseek_r1_distill_qwen_1_5b": 100.0, "olmo3_7b_instruct_dpo": 1000.0}
# The rollout's GPU memory share (ROLLOUT_GPU_MEMORY_UTILIZATION of each official launcher).
GPU_MEMORY = {"qwen3_4b": 0.7, "deepseek_r1_distill_qwen_1_5b": 0.7, "olmo3_7b_instruct_dpo": 0.6}
# The entropy split: the official text rule where the model's template puts <think> in the prompt.
ENTROPY_SPLIT = {
    "qwen3_4b": "end_of_thinking",
    "deepseek_r1_distill_qwen_1_5b": "official_text",
    "olmo3_7b_instruct_dpo": "end_of_thinking",
}


def _fake_tiny_cache(root: Path) -> Path:
    """A tiny-assets cache that reads as built (build_info.json present), under POISE_VERL_CACHE=root."""
    previous = os.environ.get("POISE_VERL_CACHE")
    os.environ["POISE_VERL_CACHE"] = str(root)
    try:
        from poise_verl.tiny.paths import tiny_assets_dir

        built = tiny_assets_dir()
    finally:
        if previous is None:
            del os.environ["POISE_VERL_CACHE"]
        else:
            os.environ["POISE_VERL_CACHE"] = previous
    built.mkdir(parents=True, exist_ok=True)
    (built / "build_info.json").write_text("{}")
    return root


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    root = _fake_tiny_cache(tmp_path_factory.mktemp("tiny_cache"))
    previous = os.environ.get("POISE_VERL_CACHE")
    os.environ["POISE_VERL_CACHE"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("POISE_VERL_CACHE", None)
    else:
        os.environ["POISE_VERL_CACHE"] = previous


def _compose_raw(recipe: str, algo: str) -> DictConfig:
    from poise_verl.config import register_resolvers

    register_resolvers()
    overrides = [f"+recipe={recipe}"] + ([] if algo == "poise" else [f"algo={algo}"])
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name="poise_trainer", overrides=overrides)


@functools.cache
def _composed(recipe: str, algo: str) -> DictConfig:
    config = _compose_raw(recipe, algo)
    OmegaConf.resolve(config)
    return config


@pytest.fixture
def config(tiny_cache, request):
    recipe, algo = request.param
    return _composed(recipe, algo)


ALL = [(recipe, algo) for recipe in RECIPES for algo in ALGOS]
ids = [f"{recipe}-{algo}" for recipe, algo in ALL]


@pytest.mark.filterwarnings("ignore:Disabled critic")  # verl's notice that GRPO-style estimators need none
@pytest.mark.parametrize("config", ALL, ids=ids, indirect=True)
def test_recipe_composes_and_passes_start_up_validation(config):
    """poise_verl.startup.rules.validate and verl's validate_config (what the launcher runs before Ray) accept it."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    from poise_verl.startup.rules import validate

    validate(config)
    validate_config(
        config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config)
    )
    assert not need_critic(config)
    assert not need_reference_policy(config)  # no KL anywhere: no reference model is built


@pytest.mark.parametrize("config", ALL, ids=ids, indirect=True)
def test_hardware_and_engine_settings(config):
    model = config.actor_rollout_ref.model
    assert config.runtime.platform == "gpu"
    assert config.trainer.device == "cuda"
    assert config.actor_rollout_ref.rollout.name == "vllm"
    assert config.actor_rollout_ref.actor.strategy == "fsdp2"
    assert model.override_config.attn_implementation == "flash_attention_2"
    assert model.use_remove_padding is True
    assert model.enable_gradient_checkpointing is True
    assert config.actor_rollout_ref.actor.fsdp_config.dtype == "bfloat16"
    assert config.trainer.nnodes == 1
    assert config.trainer.n_gpus_per_node == 2
    # Ray sizes itself from the machine, and may join an existing cluster (which refuses num_cpus/num_gpus).
    assert config.ray_kwargs.ray_init.num_cpus is None
    assert config.ray_kwargs.ray_init.num_gpus is None


@pytest.mark.parametrize("recipe", RECIPES)
def test_poise_settings(tiny_cache, recipe):
    config = _composed(recipe, "poise")
    assert config.actor_rollout_ref.model.path == MODEL_ID[recipe]
    assert config.algorithm.adv_estimator == "poise"
    assert config.trainer.v1.trainer_mode == "poise"
    assert config.actor_rollout_ref.rollout.n == 2
    assert config.data.train_batch_size == 256  # prompts per step (official)
    assert config.actor_rollout_ref.actor.ppo_mini_batch_size == 32  # prompts per mini-batch (official)
    assert config.poise.probe_layer == PROBE_LAYER[recipe]
    assert config.poise.pool_last_k == POOL_K[recipe]
    assert (config.poise.probe.prompt_pca_dim, config.poise.probe.response_pca_dim) == PCA_DIMS[recipe]
    assert config.poise.probe.ridge.alpha == RIDGE_ALPHA[recipe]
    # The other heads take the fit config's one alpha as their penalty too.
    assert config.poise.probe.logistic.l2 == config.poise.probe.mlp.l2 == RIDGE_ALPHA[recipe]
    assert config.poise.entropy_split == ENTROPY_SPLIT[recipe]
    # Both official codes encode "</think>" as the marker for every model (one token or several).
    assert config.poise.end_of_thinking_token == "</think>"
    assert config.actor_rollout_ref.rollout.gpu_memory_utilization == GPU_MEMORY[recipe]
    assert config.poise.bootstrap_steps == 16
    assert config.algorithm.filter_groups.enable is False
    assert config.reward.reward_manager.name == "naive"
    assert config.trainer.experiment_name.endswith("_poise")


@pytest.mark.parametrize("recipe", RECIPES)
def test_dapo_settings(tiny_cache, recipe):
    config = _composed(recipe, "dapo")
    assert config.algorithm.adv_estimator == "grpo"
    assert config.algorithm.norm_adv_by_std_in_grpo is True
    assert config.actor_rollout_ref.rollout.n == 16
    assert config.data.train_batch_size == 32
    assert config.actor_rollout_ref.actor.ppo_mini_batch_size == 4
    filter_groups = config.algorithm.filter_groups
    assert filter_groups.enable is True and filter_groups.metric == "acc"
    assert filter_groups.max_inflight_gen_batches == 3  # verl DAPO script: 3x generation batch
    assert config.reward.reward_manager.name == "dapo"
    shaping = config.reward.reward_kwargs
    assert shaping.max_resp_len == 8192
    assert shaping.overlong_buffer_cfg.enable is True
    assert shaping.overlong_buffer_cfg.len == 4096
    assert shaping.overlong_buffer_cfg.penalty_factor == 1.0
    assert config.trainer.experiment_name.endswith("_dapo")


@pytest.mark.parametrize("recipe", RECIPES)
def test_both_algorithms_spend_the_same_budget(tiny_cache, recipe):
    poise, dapo = _composed(recipe, "poise"), _composed(recipe, "dapo")

    def rollouts_per_step(config):
        return config.data.train_batch_size * config.actor_rollout_ref.rollout.n

    def rollouts_per_minibatch(config):
        return config.actor_rollout_ref.actor.ppo_mini_batch_size * config.actor_rollout_ref.rollout.n

    assert rollouts_per_step(poise) == rollouts_per_step(dapo) == poise.budget.rollouts_per_step == 512
    assert rollouts_per_minibatch(poise) == rollouts_per_minibatch(dapo) == 64
    assert poise.trainer.total_training_steps == dapo.trainer.total_training_steps == 200


@pytest.mark.parametrize("config", ALL, ids=ids, indirect=True)
def test_shared_training_settings(config):
    actor = config.actor_rollout_ref.actor
    rollout = config.actor_rollout_ref.rollout
    data = config.data
    assert actor.optim.lr == 1e-6
    assert actor.optim.lr_warmup_steps == 10
    assert actor.optim.lr_scheduler_type == "constant"
    assert actor.optim.weight_decay == 0.01
    assert actor.ppo_epochs == 1
    assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.clip_ratio_c) == (0.2, 0.28, 10.0)
    assert actor.loss_agg_mode == "token-mean"
    assert actor.use_kl_loss is False and config.algorithm.use_kl_in_reward is False
    assert actor.entropy_coeff == 0.0
    assert actor.grad_clip == 1.0
    assert (data.max_prompt_length, data.max_response_length) == (4096, 8192)
    assert (rollout.temperature, rollout.top_p, rollout.top_k) == (1.0, 1.0, -1)
    val = rollout.val_kwargs
    assert val.do_sample is True and (val.temperature, val.top_p, val.top_k) == (0.6, 0.95, -1)
    assert val.n == 4
    trainer = config.trainer
    assert trainer.total_training_steps == 200
    assert (trainer.save_freq, trainer.test_freq) == (40, 40)
    assert trainer.resume_mode == "auto"
    assert list(trainer.logger) == ["console", "wandb"]
    assert data.seed == 42


@pytest.mark.parametrize("config", ALL, ids=ids, indirect=True)
def test_token_limits_fit_one_sequence(config):
    """Dynamic batch sizes need room for at least one whole prompt + response; vLLM's context holds one too."""
    actor = config.actor_rollout_ref.actor
    rollout = config.actor_rollout_ref.rollout
    longest = config.data.max_prompt_length + config.data.max_response_length
    assert actor.use_dynamic_bsz is True and rollout.log_prob_use_dynamic_bsz is True
    assert actor.ppo_max_token_len_per_gpu == 2 * longest == 24576  # official
    assert rollout.log_prob_max_token_len_per_gpu >= longest
    assert rollout.max_model_len == longest
    assert rollout.max_num_batched_tokens >= longest
    assert rollout.tensor_model_parallel_size == 1
    assert 0.0 < rollout.gpu_memory_utilization <= 0.9


@pytest.mark.parametrize("config", ALL, ids=ids, indirect=True)
def test_data_and_reward_point_at_the_prepared_files(config):
    data_dir = os.environ.get("POISE_DATA_DIR", "data")
    assert config.data.train_files == f"{data_dir}/dapo_math_17k.parquet"
    assert [Path(f).name for f in config.data.val_files] == [
        "aime24.parquet",
        "aime25.parquet",
        "amc.parquet",
    ]
    reward_function = config.reward.custom_reward_function
    assert Path(reward_function.path) == REPO / "poise_verl" / "data" / "scoring.py"
    assert reward_function.name == "compute_score"
    from poise_verl.data import scoring

    assert callable(getattr(scoring, reward_function.name))


def test_data_and_checkpoint_dirs_follow_the_environment(tiny_cache, monkeypatch):
    monkeypatch.setenv("POISE_DATA_DIR", "/shared/data")
    monkeypatch.setenv("POISE_CHECKPOINT_DIR", "/shared/ckpt")
    config = _compose_raw("qwen3_4b", "dapo")
    OmegaConf.resolve(config)
    assert config.data.train_files == "/shared/data/dapo_math_17k.parquet"
    assert config.data.val_files[0] == "/shared/data/aime24.parquet"
    assert config.trainer.default_local_dir == "/shared/ckpt/poise_verl/qwen3_4b_dapo"


@pytest.mark.parametrize("recipe", RECIPES)
def test_probe_layer_is_at_the_official_relative_depth(recipe):
    """0-based model.layers index: the official one for Qwen3-4B (19) and OLMo-3-7B (7), else at Qwen3-4B's
    19/36 depth, rounded; always a real layer of the model."""
    layer, count = PROBE_LAYER[recipe], NUM_LAYERS[recipe]
    assert 0 <= layer < count
    if recipe not in OFFICIAL_LAYER:
        assert layer == round(19 / 36 * count)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_needs_no_tiny_assets(tiny_cache, recipe):
    """Every value of the base that points into the tiny assets is overridden by the recipe."""
    config = _composed(recipe, "poise")
    tiny_root = str(tiny_cache)
    leaves = OmegaConf.to_container(config, resolve=True)

    def walk(node, path=""):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                yield from walk(value, f"{path}[{index}]")
        else:
            yield path, node

    pointing_into_tiny = [
        path for path, value in walk(leaves) if isinstance(value, str) and tiny_root in value
    ]
    assert pointing_into_tiny == []


def test_composing_a_gpu_recipe_does_not_build_the_tiny_assets(monkeypatch, tmp_path):
    import poise_verl.tiny.build as tiny_build

    calls = []

    def recording_build(*args, **kwargs):
        calls.append((args, kwargs))
        return tmp_path

    monkeypatch.setattr(tiny_build, "ensure_tiny_assets", recording_build)
    _compose_raw("qwen3_4b", "poise")
    assert calls == []


@pytest.mark.parametrize("recipe", RECIPES)
def test_check_hardware_refuses_to_start_without_a_gpu(tiny_cache, recipe):
    import torch

    from poise_verl.startup.environment import check_hardware

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: the check has nothing to refuse")
    with pytest.raises(SystemExit) as raised:
        check_hardware(_composed(recipe, "poise"))
    message = str(raised.value)
    assert "GPU" in message
    assert "2 GPU(s)" in message


# The command line once per recipe, the algorithms in turn (every pair's composed config is checked above, in
# this process): a subprocess costs seconds of imports.
CLI = [(recipe, ALGOS[i % len(ALGOS)]) for i, recipe in enumerate(RECIPES)]


@pytest.mark.parametrize(("recipe", "algo"), CLI, ids=[f"{recipe}-{algo}" for recipe, algo in CLI])
def test_entry_point_prints_the_config_without_starting_ray(tiny_cache, recipe, algo):
    command = [sys.executable, "-m", "poise_verl.main", f"+recipe={recipe}"]
    if algo != "poise":
        command.append(f"algo={algo}")
    command += ["--cfg", "job"]
    env = {**os.environ, "POISE_VERL_CACHE": str(tiny_cache), "RAY_ADDRESS": ""}
    result = subprocess.run(
        command, cwd=REPO, env=env, check=False, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = result.stdout
    assert f"probe_layer: {PROBE_LAYER[recipe]}" in out
    assert "name: vllm" in out
    assert "platform: gpu" in out
    assert re.search(r"^\s+'n': 2$" if algo == "poise" else r"^\s+'n': 16$", out, flags=re.MULTILINE)
    assert "ray init kwargs" not in out + result.stderr  # verl's run_ppo never ran


# --- every value in a recipe file cites where it comes from ---

CITATION = re.compile(r"\[(official|paper|dapo-paper|verl-dapo|verl|ours)\]")
LEAF = re.compile(r"^(\s*)(?:- |[\w.+-]+:\s*\S)")  # `key: value` or a list item
BLOCK = re.compile(r"^(\s*)[\w.+-]+:\s*$")  # `key:` opening a block


def uncited_values(path: Path) -> list[str]:
    """Value lines not covered by a comment run that names a source ([official], [paper], ... [ours]).

    A comment run covers the value lines right below it: one comment may cover a group of related values, up to
    a blank line or a nested block. A comment directly above a `key:` block also covers that block's list items.
    The `defaults:` list composes files and holds no setting.
    """
    problems = []
    comment = None  # the comment run covering the current lines
    previous_was_comment = False
    in_defaults = False
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            comment, previous_was_comment = None, False
            continue
        if stripped.startswith("#"):
            comment = f"{comment} {stripped}" if previous_was_comment else stripped
            previous_was_comment = True
            continue
        if not line.startswith((" ", "-")):
            in_defaults = stripped == "defaults:"
        if BLOCK.match(line):
            if not previous_was_comment:
                comment = None
        elif LEAF.match(line) and not in_defaults and (comment is None or not CITATION.search(comment)):
            problems.append(f"{path.name}:{number}: {stripped}")
        previous_was_comment = False
    return problems


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_value_cites_a_source(recipe):
    assert uncited_values(RECIPE_DIR / f"{recipe}.yaml") == []


def test_the_citation_check_catches_an_uncited_value(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("a:\n  # [official] cited\n  b: 1\n  c: 2\n\n  d: 3\n  # no tag here\n  e: 4\n")
    assert [p.split(": ", 1)[1] for p in uncited_values(recipe)] == ["d: 3", "e: 4"]


ASYNC_OF = {"poise_async": "poise", "grpo_async": "grpo"}


def _leaves(node, prefix="") -> dict[str, object]:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


@pytest.mark.filterwarnings("ignore:Disabled critic")
@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("algo", sorted(ASYNC_OF))
def test_the_asynchronous_switch_changes_only_the_trainer_and_the_correction(tiny_cache, recipe, algo):
    """`algo=poise_async` / `grpo_async` on a GPU recipe: verl's colocated asynchronous trainer under the project's
    mode, rollout correction from the rollout's log-probs, and every other setting as the sync algorithm's."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    from poise_verl.startup.rules import validate

    asynchronous, synchronous = _composed(recipe, algo), _composed(recipe, ASYNC_OF[algo])
    validate(asynchronous)
    validate_config(
        config=asynchronous,
        use_reference_policy=need_reference_policy(asynchronous),
        use_critic=need_critic(asynchronous),
    )
    mine = _leaves(OmegaConf.to_container(asynchronous))
    theirs = _leaves(OmegaConf.to_container(synchronous))
    changed = {key for key in mine.keys() | theirs.keys() if mine.get(key) != theirs.get(key)}
    assert changed == {
        "trainer.v1.trainer_mode",
        "algorithm.rollout_correction.rollout_is",  # the recipes log the rollout's log-probs already
        "algo_name",
        "trainer.experiment_name",  # <recipe>_<algo_name>: its own checkpoint folder and trace
        "trainer.default_local_dir",
        "actor_rollout_ref.rollout.trace.experiment_name",
    }, changed
    assert mine["trainer.v1.trainer_mode"] == ("poise_colocate_async" if algo == "poise_async" else "checked_colocate_async")
    assert (mine["actor_rollout_ref.rollout.calculate_log_probs"], mine["algorithm.rollout_correction.rollout_is"]) == (
        True,
        "token",
    )


# The GPU splits recipes/README.md documents for algo=poise_fully_async: (trainer GPUs, rollout GPUs) per node.
FULLY_ASYNC_SPLITS = {"2_gpus": (1, 1), "8_gpus": (2, 6)}


@pytest.mark.filterwarnings("ignore:Disabled critic")
@pytest.mark.parametrize("split", sorted(FULLY_ASYNC_SPLITS))
@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("algo", ["poise_fully_async", "grpo_fully_async"])
def test_the_fully_asynchronous_switch_with_a_documented_split(tiny_cache, recipe, algo, split):
    """`algo=poise_fully_async` on a GPU recipe with recipes/README.md's split: verl's NCCL weight sync, no rollout
    replica on the training GPUs, one weight sync per step, and the checks before Ray and verl's own accept it."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    from poise_verl.config import register_resolvers
    from poise_verl.startup.rules import validate

    register_resolvers()
    trainer_gpus, rollout_gpus = FULLY_ASYNC_SPLITS[split]
    overrides = [f"+recipe={recipe}", f"algo={algo}", f"trainer.n_gpus_per_node={trainer_gpus}",
                 f"actor_rollout_ref.rollout.n_gpus_per_node={rollout_gpus}"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        config = compose(config_name="poise_trainer", overrides=overrides)
    OmegaConf.resolve(config)
    validate(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    rollout = config.actor_rollout_ref.rollout
    assert rollout.checkpoint_engine.backend == "nccl"  # verl's own; gloo is the CPU platform's
    assert config.actor_rollout_ref.hybrid_engine is False
    assert (rollout.nnodes, rollout.n_gpus_per_node) == (1, rollout_gpus)
    separate = config.trainer.v1.separate_async
    assert separate.parameter_sync_step * config.actor_rollout_ref.actor.ppo_mini_batch_size == config.data.train_batch_size
    assert config.ray_kwargs.ray_init.num_gpus is None  # Ray counts the node's GPUs itself
