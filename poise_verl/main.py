"""The main job: ``python -m poise_verl.main [algo=dapo] [+recipe=NAME] [key=value ...]``.

Composes ``hydra_configs/poise_trainer.yaml`` over verl 0.9.1's ``ppo_trainer.yaml`` and runs verl's own v1
trainer. With no recipe it is the tiny CPU default: the project's tiny Qwen3 policy on its arithmetic task,
POISE with two rollouts per prompt, a few minutes on a laptop. ``algo=dapo`` runs DAPO at the same number of
rollouts per step; ``+recipe=qwen3_4b`` the paper's GPU setting. ``--cfg job`` prints the composed
configuration without starting anything.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from poise_verl.config import register_resolvers
from poise_verl.launch import run

register_resolvers()


@hydra.main(config_path="hydra_configs", config_name="poise_trainer", version_base=None)
def main(config: DictConfig) -> None:
    run(config)


if __name__ == "__main__":
    main()
