from pathlib import Path

import pytest

from poise_verl.tiny.build import build


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> Path:
    """A reduced build (a few warm-up steps, small splits): real files, seconds instead of minutes.

    One torch thread: on a machine shared with other test processes two threads were 60x slower.
    """
    out = tmp_path_factory.mktemp("tiny_assets")
    return build(
        out,
        seed=0,
        steps=3,
        train_prompts=64,
        val_prompts=32,
        measure_prompts=8,
        measure_samples=2,
        threads=1,
    )
