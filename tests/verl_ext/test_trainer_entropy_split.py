"""The POISE trainer's own hooks read the end-of-thinking marker and the entropy split from the config.

``PoiseSteps._init_tokenizer`` turns ``poise.end_of_thinking_token`` into the marker's ids and ``_entropy_scalars``
builds the probe's entropy scalars with the split ``poise.entropy_split`` names. Both run here on the hooks alone
(the trainer's constructor starts Ray actors): a stand-in base class gives the tokenizer verl's trainer would load,
the tiny task's real tokenizer. The full training step runs them in tests/e2e.
"""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from poise_verl.config import CONFIG_DIR, PoiseSettings, register_resolvers
from poise_verl.tiny.tokenizer import EOS_TOKEN, build_tokenizer
from poise_verl.verl_ext.trainer.poise import PoiseSteps

TOKENIZER = build_tokenizer()


class LoadsTheTokenizer:
    """What verl's trainer does in ``_init_tokenizer``, for the tiny tokenizer."""

    def _init_tokenizer(self):
        self.tokenizer = TOKENIZER


class Hooks(PoiseSteps, LoadsTheTokenizer):
    def __init__(self, *overrides: str):  # PoiseSteps.__init__ starts the probe's Ray actors: not called
        register_resolvers()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            config = compose(config_name="poise_trainer", overrides=list(overrides))
        self.poise = PoiseSettings.from_config(config.poise)
        self._init_tokenizer()


def test_the_marker_may_be_several_tokens():
    assert Hooks().end_of_thinking_ids == (TOKENIZER.convert_tokens_to_ids("</think>"),)
    assert len(Hooks("poise.end_of_thinking_token=boxed").end_of_thinking_ids) == 5  # one token per character
    assert Hooks("poise.end_of_thinking_token=null").end_of_thinking_ids == ()
    with pytest.raises(ValueError, match="poise.end_of_thinking_token='zz' encodes to the tokenizer's unknown token"):
        Hooks("poise.end_of_thinking_token=zz")


@pytest.mark.parametrize(
    ("split", "reasoning", "answer"),
    [
        # 1 + 1 </think> \n = 2 <|im_end|>: tokens 0..3 up to </think>, 4..7 after it.
        ("end_of_thinking", 1.5, 5.5),
        # The official rule: no <think> (the template wrote it into the prompt), so reasoning 0; the EOS drops out of
        # the decoded text, so the fallback: the answer is the last len("=2") = 2 tokens, 6 and 7.
        ("official_text", 0.0, 6.5),
    ],
)
def test_the_entropy_split_is_the_configured_one(split, reasoning, answer):
    hooks = Hooks(
        f"poise.entropy_split={split}", "poise.entropy_features=[entropy_reasoning_mean,entropy_answer_mean]"
    )
    ids = TOKENIZER.encode("1+1</think>\n=2" + EOS_TOKEN, add_special_tokens=False)
    assert len(ids) == 8
    responses = torch.tensor([ids, ids[:2] + [TOKENIZER.pad_token_id] * 6])  # a second, shorter row
    mask = torch.tensor([[1.0] * 8, [1.0] * 2 + [0.0] * 6])
    entropy = torch.arange(8, dtype=torch.float32).expand(2, 8)
    scalars = hooks._entropy_scalars(entropy, mask, responses)
    assert scalars.tolist() == [[reasoning, answer], [0.0, 0.0]]  # the short row never closes its reasoning
