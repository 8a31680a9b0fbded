"""The two entropy splits on real tokenizers, on responses with ``<think>`` (Qwen3) and without (DeepSeek-R1-Distill,
whose chat template writes ``<think>`` into the prompt), and the end-of-thinking marker's ids.

The tokenizers are real Hugging Face fast tokenizers built here, one character per token (the tiny task's design,
``poise_verl.tiny.tokenizer``) with the letters these texts need: with ``<think>``/``</think>`` as tokens of their own
(Qwen3, DeepSeek-R1) and without (``</think>`` is then eight tokens, as in a tokenizer that has no such token).
Entropies are 0, 1, 2, ... along the response, so each part's mean is the mean of its token positions.
"""

from __future__ import annotations

import random

import pytest
import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from poise_verl.core.entropy import entropy_statistics
from poise_verl.reasoning_split import end_of_thinking_ids, official_spans, official_text_parts

EOS = "<|im_end|>"
CHARACTERS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789<>/{}\\+= \n")


def char_tokenizer(think_tokens: bool) -> PreTrainedTokenizerFast:
    specials = ["<|endoftext|>", EOS, "<|unk|>"]
    markers = ["<think>", "</think>"] if think_tokens else []
    vocab = {token: i for i, token in enumerate(specials + markers + CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character, newlines too
    core.decoder = decoders.Fuse()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    # Not special, as in Qwen3's and DeepSeek-R1's tokenizers: decoding with skip_special_tokens keeps them.
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in markers])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=EOS, pad_token="<|endoftext|>", unk_token="<|unk|>",
        clean_up_tokenization_spaces=False,
    )


WITH_THINK_TOKENS = char_tokenizer(think_tokens=True)
WITHOUT_THINK_TOKENS = char_tokenizer(think_tokens=False)


def both_splits(tokenizer, text: str) -> dict[str, tuple[float, float]]:
    """(reasoning mean, answer mean) of a one-row batch under each split, entropies 0, 1, 2, ... per token."""
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
    entropies, mask = torch.arange(ids.shape[1], dtype=torch.float32).unsqueeze(0), torch.ones_like(ids)
    marker = end_of_thinking_ids(tokenizer, "</think>")
    by_ids = entropy_statistics(entropies, mask, ids, marker)
    by_text = entropy_statistics(entropies, mask, parts=official_text_parts(tokenizer, ids, mask))
    return {
        split: (stats["entropy_reasoning_mean"].item(), stats["entropy_answer_mean"].item())
        for split, stats in (("end_of_thinking", by_ids), ("official_text", by_text))
    }


def test_a_qwen3_response_with_its_think_block():
    # <think> \n a b \n </think> \n \n o k <|im_end|>: 11 tokens.
    got = both_splits(WITH_THINK_TOKENS, "<think>\nab\n</think>\n\nok" + EOS)
    # end_of_thinking: reasoning = tokens 0..5 (up to and including </think>), answer = 6..10 (with the EOS).
    assert got["end_of_thinking"] == (2.5, 8.0)
    # official_text: decoding drops the EOS, so the text is one token short and the official fallback counts
    # tokens: reasoning = the first len("ab") = 2 tokens (<think> and \n), answer = the last len("ok") = 2 (k, EOS).
    assert got["official_text"] == (0.5, 9.5)


def test_a_qwen3_response_without_an_end_of_sequence_token_takes_the_spans():
    # Cut at the length limit after </think>: the decoded text tokenizes back to the same 10 tokens, so the parts
    # are the tokens inside the spans: "ab" (2, 3) and, after </think> and the blank line, "ok" (8, 9).
    got = both_splits(WITH_THINK_TOKENS, "<think>\nab\n</think>\n\nok")
    assert got["official_text"] == (2.5, 8.5)
    assert got["end_of_thinking"] == (2.5, 7.5)


@pytest.mark.parametrize("eos", [EOS, ""], ids=["finished", "cut_short"])
def test_a_deepseek_r1_response_has_no_think_and_an_official_reasoning_mean_of_0(eos):
    # The template put "<think>\n" in the prompt: the response starts inside the reasoning.
    # a b \n </think> \n \n o k [<|im_end|>]
    got = both_splits(WITH_THINK_TOKENS, "ab\n</think>\n\nok" + eos)
    assert got["end_of_thinking"] == ((1.5, 6.0) if eos else (1.5, 5.5))  # the real reasoning mean
    # official_text: no <think> in the text, no reasoning span: 0 on either path (fallback with the EOS, spans
    # without); the answer is "ok", the last two tokens (7, 8 with the EOS; 6, 7 without).
    assert got["official_text"] == ((0.0, 7.5) if eos else (0.0, 6.5))


def test_official_reasoning_is_empty_for_every_response_without_think():
    rng = random.Random(0)
    pieces = ["ab", "12", " ", "\n", "</think>", "<answer>", "</answer>", "{x}", "<thin", "k>"]
    for _ in range(200):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 12))) + rng.choice([EOS, ""])
        if "<think>" in text:
            continue
        ids = torch.tensor([WITH_THINK_TOKENS.encode(text, add_special_tokens=False)])
        reasoning, _answer = official_text_parts(WITH_THINK_TOKENS, ids, torch.ones_like(ids))
        assert not reasoning.any(), text


def test_official_spans_follow_the_official_patterns():
    # Whitespace inside the tags is left out; tags in any letter case.
    text = "<THINK>\n  why \n</Think>\n<answer> 42 </answer>"
    reasoning, answer, reasoning_text, answer_text = official_spans(text)
    assert text[slice(*reasoning)] == reasoning_text == "why"
    assert text[slice(*answer)] == answer_text == "42"
    # No <answer>: the answer runs from the first non-space character after the first </think> to the end; the
    # fallback's answer text is stripped at both ends, the span is not.
    text = "<think>a</think> b </think> c \n"
    _, answer, _, answer_text = official_spans(text)
    assert text[slice(*answer)] == "b </think> c \n" and answer_text == "b </think> c"
    # The </think> test of the answer is case-sensitive (a plain substring test), unlike the tag patterns.
    assert official_spans("<THINK>x</THINK>ok")[1] is None
    # Nothing after </think>, or no </think>: no answer span.
    assert official_spans("<think>x</think>\n  ")[1] is None
    assert official_spans("x") == (None, None, "", "")


def test_parts_land_on_the_real_tokens_of_padded_rows():
    """A left-padded row and a row with a masked-out token: the parts sit at the real tokens' columns."""
    tokenizer = WITH_THINK_TOKENS
    text = tokenizer.encode("<think>ab</think>ok", add_special_tokens=False)  # 6 tokens
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad, pad, *text], [*text[:3], pad, *text[3:], pad]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 1, 1, 1, 0]])
    reasoning, answer = official_text_parts(tokenizer, ids, mask)
    assert reasoning.nonzero().tolist() == [[0, 3], [0, 4], [1, 1], [1, 2]]  # "a", "b"
    assert answer.nonzero().tolist() == [[0, 6], [0, 7], [1, 5], [1, 6]]  # "o", "k"
    empty = official_text_parts(tokenizer, ids, torch.zeros_like(mask))
    assert not empty[0].any() and not empty[1].any()


def test_a_marker_of_several_tokens_splits_like_the_one_token_marker():
    """A tokenizer without a </think> token: the marker is its eight characters, and both rules find it."""
    marker = end_of_thinking_ids(WITHOUT_THINK_TOKENS, "</think>")
    assert len(marker) == 8
    one_token = both_splits(WITH_THINK_TOKENS, "ab</think>ok")
    several = both_splits(WITHOUT_THINK_TOKENS, "ab</think>ok")
    # 2 + 8 + 2 tokens: reasoning = tokens 0..9, answer = 10, 11; with one </think> token, 0..2 and 3, 4.
    assert several["end_of_thinking"] == (4.5, 10.5)
    assert one_token["end_of_thinking"] == (1.0, 3.5)
    # official_text reads the text: no <think> (reasoning 0), answer "ok" either way.
    assert several["official_text"] == (0.0, 10.5) and one_token["official_text"] == (0.0, 3.5)


def test_end_of_thinking_ids_refuses_a_marker_no_response_can_contain():
    assert end_of_thinking_ids(WITH_THINK_TOKENS, None) == ()
    assert end_of_thinking_ids(WITH_THINK_TOKENS, "</think>") == (WITH_THINK_TOKENS.convert_tokens_to_ids("</think>"),)
    with pytest.raises(ValueError, match=r"poise\.end_of_thinking_token='' encodes to no token"):
        end_of_thinking_ids(WITH_THINK_TOKENS, "")
    with pytest.raises(ValueError, match=r"poise\.end_of_thinking_token='<~>' encodes to the tokenizer's unknown"):
        end_of_thinking_ids(WITH_THINK_TOKENS, "<~>")  # '~' is not in the vocabulary
