"""A working byte-level tokenizer built in code, for the offline ``tiny-random`` models.

It round-trips any UTF-8 text (256 byte tokens, no merges) and knows the family's special tokens, so
prompts, chat templates and streaming decode behave as with a real tokenizer. Its text is meaningless
only because the model's weights are random.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


def byte_tokenizer(
    special_tokens: Sequence[str], *, eos: str, pad: str, chat_template: str | None = None
) -> PreTrainedTokenizerFast:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad)
    fast.add_special_tokens({"additional_special_tokens": [t for t in special_tokens if t not in (eos, pad)]})
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast
