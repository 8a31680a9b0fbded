"""A character-level tokenizer for the tiny arithmetic policy, saved as a Hugging Face tokenizer directory.

Every character of the task (digits, operators, ``=``, the letters of ``\\boxed{}``) is one token, and
``</think>`` is one added token that marks the end of the reasoning part. The special tokens borrow
Qwen's names (``<|im_start|>`` as BOS, ``<|im_end|>`` as EOS, ``<|endoftext|>`` as PAD) because verl
picks its Qwen token builder from the model type ``qwen3`` and that builder looks up ``<|im_end|>`` and a
single-token ``"\\n"``.

    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(path)      # then transformers.AutoTokenizer.from_pretrained(path)
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
UNK_TOKEN = "<|unk|>"
# Not special: verl decodes responses with skip_special_tokens=True, and the reasoning/answer split of
# POISE's entropy features needs the marker to survive decoding (Qwen3 treats it the same way).
THINK_START = "<think>"
THINK_END = "</think>"

SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN]
MARKER_TOKENS = [THINK_START, THINK_END]
CHARACTERS = list("0123456789+-*=()\\boxed{} \n")

# The prompt is the user's text after a BOS; the policy writes everything after it. An assistant turn
# (only used by verl's multi-turn helpers) ends with EOS.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The tokenizer, built from scratch (no files needed)."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + MARKER_TOKENS + CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    # One token per character; added tokens (specials, </think>) are matched before this split.
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    # Fuse joins the pieces without the spaces a WordLevel decoder would put between them.
    core.decoder = decoders.Fuse()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKER_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=256,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def prompt_text(user_content: str) -> str:
    """The string the chat template renders for one user message with a generation prompt."""
    return BOS_TOKEN + user_content
