"""Tiny randomly initialised checkpoints (hidden 32, 2 layers) with tokenizers built in-process.

Nothing is downloaded: each builder writes a complete `save_pretrained` folder (safetensors, config, tokenizer)
that llmkit loads like any local model. Seeds are fixed, so the same folder comes out every time.
"""

from __future__ import annotations

import json
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


# Tokenizer keys copied from a real GGUF into the tiny one (llama.cpp needs a tokenizer it knows: BPE, SPM...).
GGUF_TOKENIZER_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_space_prefix",
    "tokenizer.chat_template",
)


def build_gguf_causal_lm(
    path: Path, tokenizer_from: Path, *, vocab_size: int = 2048, seed: int = 0, pre: str | None = None
) -> Path:
    """A tiny float32 Llama GGUF (hidden 32, 2 layers) with the chat template of `tokenizer_from` and the first
    `vocab_size` tokens of its BPE vocabulary (with the merges among them: byte-level BPE stays complete).

    Both engines can run it: llama.cpp directly, transformers through llmkit's GGUF conversion, so greedy outputs
    can be compared on the very same weights. The weights are random but scaled so the next-token distribution is
    peaked (no near-ties for float rounding to flip). `pre` overrides the pre-tokenizer name (an unknown one
    makes llama.cpp refuse the file while transformers still loads it).
    """
    import numpy as np
    from gguf import GGUFWriter

    from llmkit.engines.llama_cpp import read_gguf_values

    meta = read_gguf_values(tokenizer_from, GGUF_TOKENIZER_KEYS)
    tokens = meta["tokenizer.ggml.tokens"][:vocab_size]
    known = set(tokens)
    merges = [m for m in meta["tokenizer.ggml.merges"] if m.replace(" ", "", 1) in known and all(
        part in known for part in m.split(" ", 1))]
    vocab = len(tokens)
    rng = np.random.default_rng(seed)
    head_dim = HIDDEN // HEADS

    def w(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(MAX_POSITIONS * 4)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(INTERMEDIATE)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(vocab)
    writer.add_file_type(0)  # all float32
    writer.add_tokenizer_model(meta["tokenizer.ggml.model"])
    writer.add_tokenizer_pre(pre or meta["tokenizer.ggml.pre"])
    writer.add_token_list(tokens)
    writer.add_token_types(meta["tokenizer.ggml.token_type"][:vocab])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(meta["tokenizer.ggml.bos_token_id"])
    writer.add_eos_token_id(meta["tokenizer.ggml.eos_token_id"])
    writer.add_unk_token_id(meta["tokenizer.ggml.unknown_token_id"])
    writer.add_pad_token_id(meta["tokenizer.ggml.padding_token_id"])
    writer.add_add_bos_token(meta["tokenizer.ggml.add_bos_token"])
    writer.add_add_space_prefix(meta["tokenizer.ggml.add_space_prefix"])
    writer.add_chat_template(meta["tokenizer.chat_template"])

    writer.add_tensor("token_embd.weight", w(vocab, HIDDEN, scale=1.0))  # tied: also the output layer
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    for i in range(LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", w(HIDDEN, HIDDEN))
        writer.add_tensor(f"blk.{i}.attn_k.weight", w(HIDDEN, HIDDEN))
        writer.add_tensor(f"blk.{i}.attn_v.weight", w(HIDDEN, HIDDEN))
        writer.add_tensor(f"blk.{i}.attn_output.weight", w(HIDDEN, HIDDEN))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", w(INTERMEDIATE, HIDDEN))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", w(INTERMEDIATE, HIDDEN))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", w(HIDDEN, INTERMEDIATE))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def build_sentence_encoder(
    path: Path,
    *,
    pooling: str | tuple[str, ...] = "mean",
    dense: tuple[int, ...] = (),
    activation: str = "torch.nn.modules.activation.Tanh",
    normalize: bool = False,
    legacy_pooling_config: bool = False,
    include_prompt: bool = True,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    max_seq_length: int | None = 64,
    seed: int = 0,
) -> Path:
    """A sentence-transformers folder around the tiny BERT encoder, written by hand as sentence-transformers saves
    one: modules.json, sentence_bert_config.json, 1_Pooling/config.json, Dense layers (config + safetensors
    weights, seeded) and a Normalize step.

    Args:
        pooling: one mode or several (concatenated).
        dense: output sizes of Dense layers after pooling, in order.
        activation: the Dense layers' activation_function, as sentence-transformers writes it.
        normalize: add a Normalize module.
        legacy_pooling_config: write the older `pooling_mode_*_token(s)` booleans instead of `pooling_mode`.
        include_prompt: Pooling's include_prompt.
        prompts / default_prompt_name: config_sentence_transformers.json's prompts.
        max_seq_length: sentence_bert_config.json's limit.
    """
    import json

    import torch
    from safetensors.torch import save_file

    build_encoder(path, seed=seed)
    modes = (pooling,) if isinstance(pooling, str) else tuple(pooling)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (path / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}))
    (path / "1_Pooling").mkdir()
    if legacy_pooling_config:
        names = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens", "mean": "pooling_mode_mean_tokens",
                 "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
                 "weightedmean": "pooling_mode_weightedmean_tokens", "lasttoken": "pooling_mode_lasttoken"}
        config = {"word_embedding_dimension": HIDDEN, **{key: mode in modes for mode, key in names.items()},
                  "include_prompt": include_prompt}
    else:
        config = {"embedding_dimension": HIDDEN, "pooling_mode": modes[0] if len(modes) == 1 else list(modes),
                  "include_prompt": include_prompt}
    (path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    size = HIDDEN * len(modes)
    generator = torch.Generator().manual_seed(seed + 1)
    for number, out in enumerate(dense, start=2):
        folder = path / f"{number}_Dense"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(
            {"in_features": size, "out_features": out, "bias": True, "activation_function": activation}))
        save_file({"linear.weight": torch.randn(out, size, generator=generator) * 0.2,
                   "linear.bias": torch.randn(out, generator=generator) * 0.1}, str(folder / "model.safetensors"))
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": folder.name,
                        "type": "sentence_transformers.models.Dense"})
        size = out
    if normalize:
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": f"{len(modules) + 1}_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    (path / "modules.json").write_text(json.dumps(modules, indent=2))
    extra: dict = {"__version__": {"sentence_transformers": "6.2.0"}}
    if prompts:
        extra["prompts"] = prompts
        extra["default_prompt_name"] = default_prompt_name
    (path / "config_sentence_transformers.json").write_text(json.dumps(extra))
    return path
# --- encoder families, each saved with its own transformers tokenizer class (as hub checkpoints are) ----------

ENCODER_FAMILIES = ("bert", "roberta", "distilbert", "electra", "xlm-roberta", "deberta-v2")
_SENTENCES = [" ".join(WORDS[i : i + 12]) for i in range(0, len(WORDS), 6)]


def _wordpiece_vocab() -> dict[str, int]:
    vocab: dict[str, int] = {}
    for token in [*SPECIALS_BERT, *WORDS, "##s", "##ing", "##ed", "##ly", "super", "##cal", "##i", "caf", "##e", "北", "京"]:
        vocab.setdefault(token, len(vocab))
    return vocab


def _unigram_vocab(specials: list[str]) -> list[tuple[str, float]]:
    """A sentencepiece-style Unigram vocabulary: specials, "▁word" pieces, then single characters as fallback."""
    pieces: list[tuple[str, float]] = [(s, 0.0) for s in specials]
    seen = {p for p, _ in pieces}
    for word in WORDS:
        for piece in (f"\u2581{word}", word):
            if piece not in seen:
                seen.add(piece)
                pieces.append((piece, -float(len(pieces)) / 100))
    for ch in sorted({c for w in WORDS for c in w} | set("\u2581.,!?'")):
        if ch not in seen:
            seen.add(ch)
            pieces.append((ch, -20.0))
    return pieces


def _byte_level_bpe(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a small byte-level BPE trained in-process, with the specials first."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_SENTENCES * 4, trainer=trainer)
    data = json.loads(tok.to_str())
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["model"]["merges"]]
    return dict(data["model"]["vocab"]), merges


def encoder_tokenizer(family: str):
    """The tokenizer class a hub checkpoint of `family` carries, built from a tiny vocabulary."""
    from transformers import (
        BertTokenizer,
        DebertaV2Tokenizer,
        DistilBertTokenizer,
        RobertaTokenizer,
        XLMRobertaTokenizer,
    )

    if family in ("bert", "electra"):
        return BertTokenizer(vocab=_wordpiece_vocab(), do_lower_case=True, model_max_length=MAX_POSITIONS)
    if family == "distilbert":
        return DistilBertTokenizer(vocab=_wordpiece_vocab(), do_lower_case=True, model_max_length=MAX_POSITIONS)
    if family == "roberta":
        vocab, merges = _byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        return RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_POSITIONS)
    if family == "xlm-roberta":
        return XLMRobertaTokenizer(vocab=_unigram_vocab(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]),
                                   model_max_length=MAX_POSITIONS)
    if family == "deberta-v2":
        return DebertaV2Tokenizer(vocab=_unigram_vocab(["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]),
                                  model_max_length=MAX_POSITIONS)
    raise ValueError(family)


def build_family(path: Path, family: str, head: str = "sequence-classification", *,
                 labels=("negative", "neutral", "positive"), seed: int = 0) -> Path:
    """A tiny `family` model with `head` ("sequence-classification", "masked-lm" or "base") and that family's
    own tokenizer class. Weights are drawn wide (initializer_range 0.5), so a slip in a forward moves the scores."""
    import torch
    import transformers as tf

    tokenizer = encoder_tokenizer(family)
    common = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, initializer_range=0.5)
    if head == "sequence-classification":
        common.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={label: i for i, label in enumerate(labels)})
    sizes = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                 intermediate_size=INTERMEDIATE)
    if family == "bert":
        config, prefix = tf.BertConfig(**sizes, max_position_embeddings=MAX_POSITIONS, **common), "Bert"
    elif family == "electra":
        config, prefix = tf.ElectraConfig(**sizes, embedding_size=16, max_position_embeddings=MAX_POSITIONS,
                                          **common), "Electra"
    elif family == "distilbert":
        config = tf.DistilBertConfig(dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=INTERMEDIATE,
                                     max_position_embeddings=MAX_POSITIONS, **common)
        prefix = "DistilBert"
    elif family in ("roberta", "xlm-roberta"):
        cls = tf.RobertaConfig if family == "roberta" else tf.XLMRobertaConfig
        config = cls(**sizes, max_position_embeddings=MAX_POSITIONS + 2, type_vocab_size=1,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **common)
        prefix = "Roberta" if family == "roberta" else "XLMRoberta"
    elif family == "deberta-v2":
        config = tf.DebertaV2Config(**sizes, max_position_embeddings=MAX_POSITIONS, relative_attention=True,
                                    position_buckets=16, pos_att_type=["p2c", "c2p"], type_vocab_size=0, **common)
        prefix = "DebertaV2"
    else:
        raise ValueError(family)
    suffix = {"sequence-classification": "ForSequenceClassification", "masked-lm": "ForMaskedLM", "base": "Model"}[head]
    torch.manual_seed(seed)
    model = getattr(tf, prefix + suffix)(config)
    return _save(model, tokenizer, path)
