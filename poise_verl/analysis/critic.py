"""A critic of the policy's own size, V(x): POISE's comparison point for its probe.

PPO trains a separate value network of the actor's size (verl: ``AutoModelForTokenClassification`` with one
label, initialised from the actor). Here the critic is a deep copy of the policy's decoder stack (with its
final norm) plus a scalar head ``Linear(H, 1)`` read at the last prompt token: it sees the prompt only and
learns V(x), the expected reward of a rollout. The head starts at zero weight and a bias equal to the
training mean pass rate, so the untrained critic is the constant baseline.

Training target: each rollout's reward R (MSE). All m rollouts of a prompt share the critic's input, so
``mean_r (V(x) - R_r)^2 = (V(x) - pass_rate(x))^2 + const``: the critic is trained on one row per prompt with
its pass rate as the target, the same gradient at 1/m of the forward passes (the compute reported is this
efficient version's).

Compute: ``6 * parameters * tokens`` per epoch (forward + backward, Kaplan et al.), counting real
(non-padding) prompt tokens.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


class PromptCritic(torch.nn.Module):
    """A copy of ``policy``'s decoder with a scalar value head at the last prompt token."""

    def __init__(self, policy, initial_value: float = 0.5):
        super().__init__()
        self.body = copy.deepcopy(policy.base_model).float()
        hidden = policy.config.get_text_config().hidden_size
        self.head = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.constant_(self.head.bias, initial_value)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` left-padded prompts -> ``(B,)`` values (the last column is each prompt's last token)."""
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
        hidden = self.body(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state  # (B, T, H)
        return self.head(hidden[:, -1]).squeeze(-1)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _left_padded(prompts: Sequence[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        mask[row, width - len(ids) :] = 1
    return input_ids.to(device), mask.to(device)


@torch.no_grad()
def predict(
    critic: PromptCritic, prompts: Sequence[list[int]], pad_id: int, batch_size: int = 64
) -> torch.Tensor:
    """``(N,)`` float32 values clipped to [0, 1] (the reward range, as the probe's predictions are)."""
    critic.eval()
    device = next(critic.parameters()).device
    values = []
    for start in range(0, len(prompts), batch_size):
        input_ids, mask = _left_padded(prompts[start : start + batch_size], pad_id, device)
        values.append(critic(input_ids, mask).float().cpu())
    return torch.cat(values).clamp(0.0, 1.0) if values else torch.zeros(0)


@dataclass
class CriticRun:
    """A trained critic and what it cost.

    Attributes:
        critic: the model; epochs, lr: its training settings.
        seconds: training wall-clock; tokens: prompt tokens processed (all epochs); flops: 6 * params * tokens.
        history: per-epoch training loss (and validation MAE when a validation set was given).
    """

    critic: PromptCritic
    epochs: int
    lr: float
    seconds: float
    tokens: int
    flops: float
    parameters: int
    history: list[dict] = field(default_factory=list)


def train_critic(
    policy,
    prompts: Sequence[list[int]],
    targets: Sequence[float],
    pad_id: int,
    epochs: int,
    lr: float,
    batch_size: int = 16,
    seed: int = 0,
    validation: tuple[Sequence[list[int]], Sequence[float]] | None = None,
    device: str | torch.device = "cpu",
) -> CriticRun:
    """Fit V(x) to ``targets`` (per-prompt pass rates) with Adam and MSE, ``epochs`` passes in seeded order."""
    if not prompts:
        raise ValueError("the critic needs at least one training prompt")
    torch.manual_seed(seed)
    critic = PromptCritic(policy, initial_value=float(sum(targets) / len(targets))).to(device)
    optimiser = torch.optim.Adam(critic.parameters(), lr=lr)
    order_rng = random.Random(seed)
    target = torch.tensor(list(targets), dtype=torch.float32)
    history, tokens = [], 0
    started = time.monotonic()
    for epoch in range(epochs):
        critic.train()
        order = list(range(len(prompts)))
        order_rng.shuffle(order)
        total = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            input_ids, mask = _left_padded([prompts[i] for i in batch], pad_id, device)
            loss = torch.nn.functional.mse_loss(critic(input_ids, mask), target[batch].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(critic.parameters(), 1.0)
            optimiser.step()
            total += float(loss.detach()) * len(batch)
            tokens += int(mask.sum())
        entry = {"epoch": epoch + 1, "train_mse": total / len(prompts)}
        if validation is not None:
            predicted = predict(critic, validation[0], pad_id)
            entry["validation_mae"] = float((predicted - torch.tensor(list(validation[1]))).abs().mean())
        history.append(entry)
    seconds = time.monotonic() - started
    parameters = critic.parameter_count()
    return CriticRun(critic, epochs, lr, seconds, tokens, 6.0 * parameters * tokens, parameters, history)


def select_and_train_critic(
    policy,
    prompts: Sequence[list[int]],
    targets: Sequence[float],
    pad_id: int,
    epochs: int,
    learning_rates: Sequence[float],
    batch_size: int = 16,
    seed: int = 0,
    validation_fraction: float = 0.2,
    device: str | torch.device = "cpu",
) -> tuple[CriticRun, dict]:
    """Pick the learning rate and epoch count on a validation slice of the TRAINING prompts, then retrain on
    all of them. With a single learning rate and no validation slice, train once for ``epochs``.

    Returns the final run and a selection record (grid, chosen settings, selection seconds and FLOPs).
    """
    if len(learning_rates) == 1 and validation_fraction <= 0:
        run = train_critic(
            policy, prompts, targets, pad_id, epochs, learning_rates[0], batch_size, seed, None, device
        )
        return run, {"grid": [], "lr": learning_rates[0], "epochs": epochs, "seconds": 0.0, "flops": 0.0}
    order = list(range(len(prompts)))
    random.Random(seed + 1).shuffle(order)
    held = max(1, math.ceil(validation_fraction * len(prompts))) if len(prompts) > 1 else 0
    validation_index, fit_index = order[:held], order[held:] or order
    validation = ([prompts[i] for i in validation_index], [targets[i] for i in validation_index])
    grid, seconds, flops = [], 0.0, 0.0
    best = None
    for lr in learning_rates:
        run = train_critic(
            policy,
            [prompts[i] for i in fit_index],
            [targets[i] for i in fit_index],
            pad_id,
            epochs,
            lr,
            batch_size,
            seed,
            validation,
            device,
        )
        seconds, flops = seconds + run.seconds, flops + run.flops
        for entry in run.history:
            grid.append({"lr": lr, **entry})
            if best is None or entry["validation_mae"] < best[0]:
                best = (entry["validation_mae"], lr, entry["epoch"])
        del run
    _, lr, best_epochs = best
    final = train_critic(policy, prompts, targets, pad_id, best_epochs, lr, batch_size, seed, None, device)
    record = {
        "grid": grid,
        "lr": lr,
        "epochs": best_epochs,
        "validation_prompts": len(validation_index),
        "seconds": seconds,
        "flops": flops,
    }
    return final, record
