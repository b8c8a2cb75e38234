"""A new tokenizer trained on a corpus with the `tokenizers` library, wrapped so AutoTokenizer loads it as is.

- masked LM: WordPiece with BERT's uncased normalizer and pre-tokenizer, `[PAD] [UNK] [CLS] [SEP] [MASK]` as
  ids 0-4, wrapped in transformers' `BertTokenizer` (which adds `[CLS] ... [SEP]` and pads on the right).
- causal LM: byte-level BPE (GPT-2's pre-tokenizer: every byte is in the alphabet, so nothing is unknown), with
  `<|endoftext|>` as BOS/EOS/UNK and `<|pad|>` for padding, wrapped in `GPT2Tokenizer` (no special tokens added
  to the text; llama.cpp's GGUF export knows this layout).

Saved with `save_pretrained`, either reloads through `AutoTokenizer` into the same pipeline (tests compare ids).
Byte-level BPE training is repeatable; WordPiece training is not quite (the trainer breaks ties between equal
counts in hash-map order, so two runs can differ in a few tokens), which is why a run saves its tokenizer once
for its other processes and for --resume instead of training it again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llmkit.errors import UsageError

OBJECTIVES = ("mlm", "clm")
MLM_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CLM_SPECIALS = ("<|endoftext|>", "<|pad|>")
BYTE_ALPHABET = 256  # byte-level BPE starts from every byte
# WordPiece keeps at most this many distinct characters (the most frequent; the rest become [UNK]), as the
# BertWordPieceTokenizer of `tokenizers` does by default; a corpus with many scripts would otherwise spend the
# whole vocabulary on its alphabet.
WORDPIECE_ALPHABET_LIMIT = 1000


def minimum_vocab_size(objective: str) -> int | None:
    """The smallest vocabulary known before training (byte-level BPE: 256 bytes + special tokens), else None:
    a WordPiece alphabet depends on the corpus and is checked after training."""
    return BYTE_ALPHABET + len(CLM_SPECIALS) if objective == "clm" else None


def _alphabet_error(vocab_size: int, needed: int, objective: str) -> UsageError:
    what = (
        f"{BYTE_ALPHABET} bytes + {len(CLM_SPECIALS)} special tokens"
        if objective == "clm"
        else f"the corpus's characters, their ## forms and {len(MLM_SPECIALS)} special tokens"
    )
    return UsageError(
        f"--vocab-size {vocab_size} is below the tokenizer's alphabet ({needed} tokens: {what}); "
        f"use --vocab-size {needed} or more"
    )


def train_tokenizer(texts: Sequence[str], objective: str, vocab_size: int, *, max_length: int) -> Any:
    """Train a tokenizer for `objective` on `texts`.

    Args:
        texts: the training texts.
        objective: "mlm" (WordPiece, BERT layout) or "clm" (byte-level BPE, GPT-2 layout).
        vocab_size: the largest vocabulary wanted, special tokens included (a small corpus may give fewer).
        max_length: the model's context, saved as the tokenizer's `model_max_length`.

    Returns:
        A transformers tokenizer (`BertTokenizer` or `GPT2Tokenizer`, both backed by `tokenizers`).

    Raises:
        UsageError: an unknown objective, or `vocab_size` below the alphabet.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if objective not in OBJECTIVES:
        raise UsageError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    floor = minimum_vocab_size(objective)
    if floor is not None and vocab_size < floor:
        raise _alphabet_error(vocab_size, floor, objective)

    if objective == "mlm":
        from transformers import BertTokenizer

        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)  # what BertTokenizer(do_lower_case=True) builds
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer: Any = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            special_tokens=list(MLM_SPECIALS),
            limit_alphabet=WORDPIECE_ALPHABET_LIMIT,
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
        trained = tok.get_vocab()
        if len(trained) > vocab_size:  # the trainer keeps the whole alphabet whatever size was asked for
            raise _alphabet_error(vocab_size, len(trained), objective)
        return BertTokenizer(vocab=trained, do_lower_case=True, model_max_length=max_length)

    from transformers import GPT2Tokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(CLM_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    model = json.loads(tok.to_str())["model"]
    return GPT2Tokenizer(
        vocab=model["vocab"],
        merges=[tuple(pair) for pair in model["merges"]],  # type: ignore[misc]  # pairs, as BPE takes them
        unk_token=CLM_SPECIALS[0],
        bos_token=CLM_SPECIALS[0],
        eos_token=CLM_SPECIALS[0],
        pad_token=CLM_SPECIALS[1],
        model_max_length=max_length,
    )


def check_reused(tokenizer: Any, objective: str) -> None:
    """Refuse a `--tokenizer` that cannot serve `objective`: masked LM needs a mask token, causal LM an
    end-of-text token (EOS, or SEP as a fallback) to separate texts.

    Raises:
        UsageError: the missing token, named.
    """
    if objective == "mlm" and tokenizer.mask_token_id is None:
        raise UsageError("--tokenizer has no mask token, which --objective mlm needs; use a BERT-style tokenizer")
    if objective == "clm" and tokenizer.eos_token_id is None and tokenizer.sep_token_id is None:
        raise UsageError("--tokenizer has no end-of-text (EOS) token to separate texts; use a GPT-style tokenizer")
