"""A wheel (non-editable) install finds its Hydra configs and composes the recipes.

`poise_verl/hydra_configs` is a link to the top-level `hydra_configs/` in a checkout; the wheel must carry the
files themselves, or `pip install poise-verl` (rather than `pip install -e .`) gives a package that cannot start.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the venv's setuptools builds it, so no index is needed.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO), "-w", str(out)],
        check=True,
        cwd=out,
    )
    (wheel,) = out.glob("poise_verl-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for config in ["poise_trainer.yaml", "algo/dapo.yaml", "platform/gpu.yaml", "recipe/qwen3_4b.yaml"]:
        assert f"poise_verl/hydra_configs/{config}" in names, f"{wheel.name} lacks hydra_configs/{config}"
    site = out / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)], check=True
    )
    assert (site / "poise_verl" / "hydra_configs").is_dir()
    assert not (site / "poise_verl" / "hydra_configs").is_symlink()
    return site


@pytest.mark.parametrize("extra", [[], ["+recipe=qwen3_4b", "algo=dapo"]])
def test_installed_wheel_composes_its_configs(wheel_site: Path, tmp_path: Path, extra: list[str]) -> None:
    # Run from a folder with no checkout in sight, with the wheel's copy first on the path.
    env = {**os.environ, "PYTHONPATH": str(wheel_site)}
    probe = subprocess.run(
        [sys.executable, "-c", "import poise_verl; print(poise_verl.__file__)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    )
    assert probe.stdout.strip().startswith(str(wheel_site)), probe.stdout
    result = subprocess.run(
        [sys.executable, "-m", "poise_verl.main", *extra, "--cfg", "job"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "adv_estimator:" in result.stdout
    if extra:
        assert "Qwen3-4B" in result.stdout or "qwen3" in result.stdout.lower()
