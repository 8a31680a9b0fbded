from transformers import AutoTokenizer
from verl.utils.tokenizer import normalize_token_ids
from verl.utils.tokenizer.continuous_token import QwenContinuousTokenBuilder

from poise_verl.tiny.tokenizer import THINK_END


def test_round_trip_and_special_tokens(tiny_assets):
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets / "model")
    text = "735</think>\\boxed{537}"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) == 3 + 1 + len("\\boxed{537}")  # one token per character, </think> is one token
    assert ids[3] == tokenizer.convert_tokens_to_ids(THINK_END)
    assert len({tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id}) == 3
    # verl decodes responses with skip_special_tokens=True: EOS/PAD go, the end-of-thinking marker stays.
    padded = ids + [tokenizer.eos_token_id, tokenizer.pad_token_id]
    assert tokenizer.decode(padded, skip_special_tokens=True) == text


def test_chat_template(tiny_assets):
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets / "model")
    messages = [{"role": "user", "content": "12+34="}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == tokenizer.bos_token + "12+34="
    expected = [tokenizer.bos_token_id] + tokenizer("12+34=", add_special_tokens=False)["input_ids"]
    # transformers 5 returns a BatchEncoding for tokenize=True; verl normalises it, return_dict=False gives ids.
    assert (
        normalize_token_ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True)) == expected
    )
    plain = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert plain == expected


def test_verl_qwen_token_builder_accepts_it(tiny_assets):
    """verl's agent loop picks the Qwen builder for model_type qwen3; it needs <|im_end|> and a 1-token newline."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets / "model")
    builder = QwenContinuousTokenBuilder(tokenizer)
    ids = builder.build_initial_tokens([{"role": "user", "content": "7*8="}])
    assert tokenizer.decode(ids) == tokenizer.bos_token + "7*8="
