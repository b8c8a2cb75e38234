"""Tiny randomly initialised checkpoints (hidden 32, 2 layers) with tokenizers built in-process.

Nothing is downloaded: each builder writes a complete `save_pretrained` folder (safetensors, config, tokenizer)
that llmkit loads like any local model. Seeds are fixed, so the same folder comes out every time.
"""

from __future__ import annotations

from pathlib import Path

WORDS = (
    "the a an of to and in is was it that for on with as by at from this be are or not have has had "
    "paris london berlin rome madrid france england germany italy spain capital city country river king queen "
    "man woman boy girl dog cat bird fish tree house car road sun moon star sky sea water fire earth air "
    "good bad great terrible awful wonderful love hate like enjoyed loved hated boring fun happy sad angry "
    "movie film book song food meal service product story plot actor music price quality "
    "very really quite so too not never always sometimes often "
    "one two three four five six seven eight nine ten red blue green yellow black white "
    "what who where when why how which answer question please tell me you i we they he she "
    "positive negative neutral yes no true false hello world today tomorrow yesterday time day night "
    ". , ! ? : ; ' \" ( ) -"
).split()

SPECIALS_BERT = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SPECIALS_LM = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

HIDDEN = 32
LAYERS = 2
HEADS = 2
INTERMEDIATE = 64
MAX_POSITIONS = 128


def _vocab(specials: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for token in specials + WORDS:
        vocab.setdefault(token, len(vocab))
    return vocab


def bert_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = _vocab(SPECIALS_BERT)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.add_special_tokens(SPECIALS_BERT)
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MAX_POSITIONS,
    )


def lm_tokenizer(chat: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = _vocab(SPECIALS_LM)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.add_special_tokens(SPECIALS_LM)  # matched whole, before pre-tokenization splits "<|user|>"
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=MAX_POSITIONS,
    )
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def _save(model, tokenizer, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def build_causal_lm(path: Path, *, chat: bool = True, seed: int = 0) -> Path:
    """A tiny Llama-architecture causal LM (the bundled SmolLM2 is a Llama too)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = lm_tokenizer(chat=chat)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    return _save(model, tokenizer, path)


def build_seq2seq_lm(path: Path, *, seed: int = 0) -> Path:
    """A tiny T5 encoder-decoder."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = lm_tokenizer(chat=False)
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=HIDDEN,
        d_kv=HIDDEN // HEADS,
        d_ff=INTERMEDIATE,
        num_layers=LAYERS,
        num_decoder_layers=LAYERS,
        num_heads=HEADS,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    model = T5ForConditionalGeneration(config)
    return _save(model, tokenizer, path)


def _bert_config(tokenizer, **extra):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def build_masked_lm(path: Path, *, seed: int = 0) -> Path:
    """A tiny BERT with an MLM head."""
    import torch
    from transformers import BertForMaskedLM

    tokenizer = bert_tokenizer()
    torch.manual_seed(seed)
    model = BertForMaskedLM(_bert_config(tokenizer))
    return _save(model, tokenizer, path)


def build_classifier(path: Path, *, labels=("negative", "positive"), multi_label: bool = False, seed: int = 0) -> Path:
    """A tiny BERT sequence classifier with named labels."""
    import torch
    from transformers import BertForSequenceClassification

    tokenizer = bert_tokenizer()
    torch.manual_seed(seed)
    config = _bert_config(
        tokenizer,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
    )
    model = BertForSequenceClassification(config)
    return _save(model, tokenizer, path)


def build_encoder(path: Path, *, seed: int = 0) -> Path:
    """A tiny BERT encoder with no head (like the bundled MiniLM)."""
    import torch
    from transformers import BertModel

    tokenizer = bert_tokenizer()
    torch.manual_seed(seed)
    model = BertModel(_bert_config(tokenizer))
    return _save(model, tokenizer, path)


def build_masked_lm_angle_mask(path: Path, *, seed: int = 0) -> Path:
    """A tiny BERT MLM whose tokenizer's mask is `<mask>` (as RoBERTa's), to test that [MASK] maps onto it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertForMaskedLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>", "<mask>"]
    vocab = _vocab(specials)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.add_special_tokens(specials)
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", cls_token="<s>", sep_token="</s>",
        bos_token="<s>", eos_token="</s>", mask_token="<mask>", model_max_length=MAX_POSITIONS,
    )
    torch.manual_seed(seed)
    model = BertForMaskedLM(_bert_config(tokenizer))
    return _save(model, tokenizer, path)


def lm_tokenizer_bpe(vocab_size: int = 320):
    """A byte-level BPE tokenizer (GPT-2/SmolLM style: GGUF's "gpt2" tokenizer model), trained in-process."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    sentences = [" ".join(WORDS[i : i + 12]) for i in range(0, len(WORDS), 6)]
    tok.train_from_iterator(sentences * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=MAX_POSITIONS,
    )
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return fast


def build_causal_lm_bpe(path: Path, *, seed: int = 0) -> Path:
    """A tiny Llama with a byte-level BPE tokenizer and grouped KV heads: exportable to GGUF like SmolLM2."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = lm_tokenizer_bpe()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN * 2,  # 64: rows split into Q8_0/Q4_0's 32-value blocks
        intermediate_size=INTERMEDIATE * 2,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as SmolLM2: exercises the K permutation
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    return _save(model, tokenizer, path)
