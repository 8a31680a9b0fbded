"""Fixtures for the data tests: the dataset fixture files and a character-level tokenizer for verl.

The fixture files are written by fixtures/make_fixtures.py; nothing is downloaded.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# One token per printable ASCII character; LaTeX, digits and English all fit.
SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def char_tokenizer(tmp_path_factory):
    """A PreTrainedTokenizerFast over single characters with a minimal chat template, saved to disk."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    characters = sorted(set(string.printable) - set("\x0b\x0c"))
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + characters)}
    # BPE without merges splits text into single characters; Fuse joins them back without spaces.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    directory = tmp_path_factory.mktemp("char_tokenizer")
    tokenizer.save_pretrained(directory)
    return PreTrainedTokenizerFast.from_pretrained(directory)
