import json
import threading

from transformers import AutoModelForCausalLM, AutoTokenizer

import poise_verl.tiny.build as tiny_build
import poise_verl.tiny.paths as tiny_paths
from poise_verl.tiny.model import count_parameters
from poise_verl.tiny.sampling import pass_rates
from poise_verl.tiny.task import generate_problems


def test_model_loads_and_generates(tiny_assets):
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets / "model")
    model = AutoModelForCausalLM.from_pretrained(tiny_assets / "model")
    assert model.config.model_type == "qwen3" and model.config.num_hidden_layers >= 4
    assert count_parameters(model) < 3_000_000
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "12+34="}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    out = model.generate(**prompt, max_new_tokens=8)
    assert out.shape[0] == 1 and 1 <= out.shape[1] - prompt["input_ids"].shape[1] <= 8


def test_build_info(tiny_assets):
    info = json.loads((tiny_assets / "build_info.json").read_text())
    assert info["seed"] == 0 and info["recipe_version"] == tiny_build.RECIPE_VERSION
    assert set(info["measured"]) >= {"val_greedy_accuracy", "pass_rate_fraction_in_0.1_0.9"}
    assert (tiny_assets / "model" / "model.safetensors").exists()


def test_pass_rates_of_a_tiny_model(tiny_assets):
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets / "model")
    model = AutoModelForCausalLM.from_pretrained(tiny_assets / "model")
    rates = pass_rates(model, tokenizer, generate_problems(5, seed=0), n=3, temperature=1.0)
    assert len(rates) == 5 and all(r in (0, 1 / 3, 2 / 3, 1) for r in rates)


def test_ensure_tiny_assets_builds_once(tmp_path, monkeypatch):
    """Two threads ask for the assets at once: one builds, the other waits on the lock and then finds the build.

    The race is made certain without a clock: the first build does not finish until both threads have found no
    build and gone for the lock (each passes ``_locked`` on its way there, which counts them)."""
    calls = []
    at_the_lock = threading.Semaphore(0)
    locked = tiny_build._locked

    def counted_locked(handle):
        at_the_lock.release()
        return locked(handle)

    def fake_build(out, seed=0):
        calls.append(out)
        if len(calls) == 1:  # this thread holds the lock; the other has looked for the build and waits for it
            for _ in range(2):
                assert at_the_lock.acquire(timeout=120), "the other thread never went for the lock"  # a bound
        (out / "build_info.json").write_text("{}")
        return out

    monkeypatch.setattr(tiny_build, "build", fake_build)
    monkeypatch.setattr(tiny_build, "_locked", counted_locked)
    target = tmp_path / "cache" / "tiny"
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(tiny_build.ensure_tiny_assets(target)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [target, target] and len(calls) == 1
    assert (target / "build_info.json").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == [".tiny.lock", "tiny"]  # no staging dir left


def test_assets_dir_is_the_shipped_one_unless_a_cache_is_set(monkeypatch, tmp_path):
    monkeypatch.delenv("POISE_VERL_CACHE", raising=False)
    assert tiny_paths.tiny_assets_dir() == tiny_paths.SHIPPED_DIR
    info = json.loads((tiny_paths.SHIPPED_DIR / "build_info.json").read_text())
    assert info["recipe_version"] == tiny_build.RECIPE_VERSION and info["val_prompts"] == tiny_build.VAL_PROMPTS
    monkeypatch.setenv("POISE_VERL_CACHE", str(tmp_path))
    assert tiny_paths.tiny_assets_dir() == tmp_path / f"tiny-v{tiny_paths.RECIPE_VERSION}"


def test_resolving_the_tiny_paths_imports_neither_torch_nor_the_build():
    """Every process that composes a config resolves ``${poise_tiny:...}``, and every run's driver asks for the
    assets (``ensure_tiny_assets``): where they are built, paths only, nothing heavy (the builder imports torch
    and transformers' model code)."""
    import subprocess
    import sys

    probe = (
        "import sys; from poise_verl.config import register_resolvers; from omegaconf import OmegaConf; "
        "register_resolvers(); print(OmegaConf.create({'m': '${poise_tiny:model}'}).m); "
        "from poise_verl.tiny import ensure_tiny_assets; print(ensure_tiny_assets()); "
        "print(sorted(m for m in ('torch', 'poise_verl.tiny.build') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == str(tiny_paths.tiny_assets_dir() / "model")
    assert out[1] == str(tiny_paths.tiny_assets_dir())
    assert out[2] == "[]"
