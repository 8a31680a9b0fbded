"""Everything a launch checks before Ray starts, by what each check reads. A configuration or an input that cannot
work stops here, before any worker exists, with a message that names the key, the file or row, and what to change:
without these a wrong path costs 40-100 s of cluster start-up and ends deep inside a worker.

- ``rules.validate``: the composed config alone, combinations that cannot work (raises ValueError on the first);
- ``inputs``: the files the config names: data, model and tokenizer, prompt lengths, the reward function;
- ``resume``: the checkpoint a launch would resume from: whole, the same algorithm, the same ``poise.*`` settings;
- ``environment``: this machine and the installed packages: GPUs for a GPU recipe, the plugins verl loaded.

``poise_verl.launch.run`` runs them in this order; :func:`preflight` lists every problem of the inputs and the
checkpoint at once (:class:`PreflightError`).
"""

from __future__ import annotations

from omegaconf import DictConfig

from poise_verl.config import TrainerMode
from poise_verl.startup.inputs import check_data, check_model, check_prompt_lengths, check_reward_function
from poise_verl.startup.resume import check_resume

__all__ = ["PreflightError", "preflight"]


class PreflightError(SystemExit):
    """The launch stops before Ray starts; ``str(error)`` is the whole message (one problem per line)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = [f"poise-verl: stopped before starting Ray, {len(problems)} problem(s) to fix:"]
        lines += [f"  {i}. {problem}" for i, problem in enumerate(problems, 1)]
        super().__init__("\n".join(lines))

    def __str__(self) -> str:
        return str(self.code)


def preflight(config: DictConfig) -> None:
    """Raise :class:`PreflightError` listing every problem found; return quietly when there is none."""
    is_poise = _is_poise(config)
    problems: list[str] = []
    problems += check_data(config, is_poise)
    problems += check_model(config, is_poise)
    problems += check_resume(config, is_poise)
    problems += check_reward_function(config)
    if not problems:  # the files and the tokenizer load: now the prompts' lengths
        problems += check_prompt_lengths(config)
    if problems:
        raise PreflightError(problems)


def _is_poise(config: DictConfig) -> bool:
    return config.trainer.v1.trainer_mode in TrainerMode.POISE_MODES
