"""What POISE's features of one rollout should be, computed outside verl: a plain transformers forward.

For a rollout's prompt and response token ids this runs the policy once with ``output_hidden_states=True`` on
the concatenated ids (one sequence, no padding, no packing) and pools by the official rule, written here as a
plain loop over one sequence: decoder layer L is ``hidden_states[L + 1]`` (index 0 is the embeddings); the
prompt feature is the mean of the last k prompt tokens; the response feature the mean of the last k response
tokens up to and including the response's last end-of-thinking token (all of it when there is none). The
entropy statistics are those of ``softmax(logits / T)`` at the positions that predict the response tokens:
the mean over the whole response, over the reasoning part (up to and including the first end-of-thinking
token) and over the answer part (after it); both parts 0 when the response never closes its thinking.

Nothing of verl or of ``poise_verl.core`` is used, so an equal result says verl's packed, dynamically batched,
rank-split forward handed each row its own features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ReferenceFeatures:
    prompt: torch.Tensor  # (H,)
    response: torch.Tensor  # (H,)
    entropy: torch.Tensor  # (3,) whole, reasoning, answer means


def _mean(values: torch.Tensor) -> torch.Tensor:
    return values.mean(0) if len(values) else torch.zeros(values.shape[1:], dtype=values.dtype)


def reference_features(
    model, prompt_ids: torch.Tensor, response_ids: torch.Tensor, layer: int, k: int, think_id: int,
    temperature: float = 1.0,
) -> ReferenceFeatures:
    prompt = [int(t) for t in prompt_ids]
    response = [int(t) for t in response_ids]
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    hidden = out.hidden_states[layer + 1][0].to(torch.float32)  # (P + R, H)
    p, r = len(prompt), len(response)
    closes = [i for i, token in enumerate(response) if token == think_id]
    cut = closes[-1] + 1 if closes else r  # the response pool ends at the last end-of-thinking token
    prompt_feature = _mean(hidden[max(0, p - k) : p])
    response_feature = _mean(hidden[p + max(0, cut - k) : p + cut])

    # logits[t] predicts token t + 1: the response tokens are predicted at positions p - 1 .. p + r - 2.
    logits = out.logits[0, p - 1 : p + r - 1].to(torch.float32) / temperature
    entropy = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)  # (R,)
    if closes:
        first = closes[0]
        reasoning, answer = _mean(entropy[: first + 1]), _mean(entropy[first + 1 :])
    else:
        reasoning = answer = torch.tensor(0.0)
    return ReferenceFeatures(prompt_feature, response_feature, torch.stack([_mean(entropy), reasoning, answer]))


def response_log_probs(model, prompt_ids: torch.Tensor, response_ids: torch.Tensor, temperature: float = 1.0):
    """``(R,)`` log-probabilities of the response tokens under ``model``, log softmax(logits / T): what a rollout
    server reports for the weights that sampled them."""
    prompt = [int(t) for t in prompt_ids]
    response = [int(t) for t in response_ids]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + response])).logits[0].to(torch.float32)
    p, r = len(prompt), len(response)
    log_probs = torch.log_softmax(logits[p - 1 : p + r - 1] / temperature, -1)  # position t predicts token t + 1
    return log_probs.gather(-1, torch.tensor(response)[:, None])[:, 0]
