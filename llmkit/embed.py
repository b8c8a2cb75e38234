"""`llmkit embed`: one vector per text, pooled as the model's own files say (sentence-transformers folders).

The steps, per window of inputs (read lazily, so memory stays flat on any input size):

1. tokenize with the model's fast tokenizer (the `tokenizers` library; the prefix/prompt prepended, lower-cased when
   `sentence_bert_config.json` says so, cut at its `max_seq_length`);
2. sort the window by length and pad each batch only to its own longest input;
3. the engine returns the last hidden states as numpy (`hidden_states(batch)`, see `_load_encoder`, the one
   place that picks the engine);
4. `pooling.Head` pools, applies the model's Dense layers and normalises, in numpy;
5. results come back in input order as `Embedding` records.

`Embedder` holds a loaded model for any number of calls (search embeds its queries and corpus with it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from llmkit.engines import Choice
from llmkit.errors import DataError, UsageError

if TYPE_CHECKING:  # numpy and the pooling code load when a model does, not for `llmkit embed --help`
    import numpy as np

    from llmkit.pooling import Head
    from llmkit.sentence_modules import SentenceConfig

DEFAULT_MODEL = "minilm-l6"  # bundled all-MiniLM-L6-v2: works offline
DEFAULT_BATCH_SIZE = 32  # texts per forward pass (sentence-transformers' encode default)
# Batches read ahead and sorted by length, so padding stays small. On the 3,000 mixed texts of benchmarks/embed.py,
# windows of 16 x 32 texts padded to 150,080 tokens, one sort of all (as sentence-transformers sorts) to 141,144
# (136,648 real); memory stays bounded by the window (4,096 texts at the default batch size).
LENGTH_GROUP_WINDOW = 128
TOKENIZE_CHUNK = 512  # texts tokenized at once; only their ids are kept (`Tokens`), so a window stays small
BASE = "base"  # the head embed asks an engine for: the bare encoder's last hidden states
DEFAULT_MAX_LENGTH = 512  # when neither the model nor its tokenizer names a limit
EMPTY = "empty input"


class Tokens(NamedTuple):
    """What embed keeps of one text's `tokenizers` Encoding (which also holds its tokens, offsets and the overflow
    cut off by truncation: ~80 KB for a long article cut at 256 tokens, against 4 KB here)."""

    ids: np.ndarray
    type_ids: np.ndarray
    overflowing: bool


@dataclass(frozen=True)
class Embedding:
    """The vector of one input.

    Attributes:
        text: the input as given (without the prefix).
        embedding: the vector (None for an empty input).
        model: the model spec.
        pooling: the pooling mode(s), e.g. "mean" or "cls+mean".
        normalized: the vector has unit L2 norm.
        dimension: the vector's length.
        tokens: tokens the model saw (prefix and special tokens included).
        engine: the engine that ran the model.
        engine_reason: why that engine ran.
        truncated: the input was longer than the model's maximum and was cut.
        error: why there is no vector (e.g. "empty input").
    """

    text: str
    model: str
    pooling: str
    normalized: bool
    dimension: int
    tokens: int
    engine: str
    engine_reason: str
    truncated: bool = False
    error: str | None = None
    embedding: list[float] | None = None  # last: records read well with the long list at the end


def _fast_tokenizer(tokenizer: Any) -> Any:
    """A private copy of the `tokenizers.Tokenizer` behind `tokenizer` (a transformers fast tokenizer or the
    `tokenizers` object itself), with no padding or truncation of its own (a saved tokenizer.json may carry
    fixed ones that transformers does not apply)."""
    from tokenizers import Tokenizer

    backend = tokenizer if isinstance(tokenizer, Tokenizer) else getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UsageError("this model has no fast tokenizer (tokenizer.json); llmkit embed needs one")
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


def _pad_id(tokenizer: Any, fast: Any) -> int:
    """The padding id: the transformers tokenizer's, else the pad token the `tokenizers` object knows (pads are
    masked out, so this only has to be a valid id)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None:
        return int(pad)
    for token in ("[PAD]", "<pad>", "<|pad|>", "<|endoftext|>"):
        found = fast.token_to_id(token)
        if found is not None:
            return int(found)
    return 0


def _load_encoder(
    spec: str,
    engine: str,
    *,
    device: str,
    dtype: str,
    revision: str | None,
    allow_pickle: bool,
    trust_remote_code: bool,
) -> tuple[Any, Choice]:
    """The one place that picks and loads the engine for embeddings: `engines.choose.choose_encoder` for the
    base encoder (auto: ONNX Runtime on the CPU, exported once; transformers where it cannot run), then that
    engine's feature-extraction handle. Every handle offers `hidden_states(batch) -> float32 [b, s, h]` for numpy
    int64 inputs and a `tokenizer`; optionally `max_positions`, and `many(batches, finish)` (runs the batches on
    worker threads, each calling `finish(batch, hidden)` as soon as its batch is done).

    Raises:
        UsageError: an unknown --engine, or --engine onnx on what ONNX Runtime cannot run (exit 2).
    """
    from llmkit.engines import choose

    choice = choose.choose_encoder(spec, BASE, device=device, dtype=dtype, requested=engine, revision=revision,
                                   trust_remote_code=trust_remote_code)
    encoder: Any = None
    if choice.engine == "onnx":
        from llmkit.engines import onnx

        try:
            encoder = onnx.load_encoder(spec, revision=revision, allow_pickle=allow_pickle,
                                        trust_remote_code=trust_remote_code, device=choose.onnx_device(device))
        except onnx.ExportError as exc:
            if engine == "onnx":
                raise
            choice = choose.fell_back(spec, exc.message)
    if choice.fallback is not None:
        from llmkit.console import warn

        warn(choice.fallback)  # once per run: the engine changes speed (the reason is in every record)
    if encoder is None:
        from llmkit.engines import transformers_encoder

        encoder = transformers_encoder.load_encoder(spec, device=device, dtype=dtype, revision=revision,
                                                    allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    return encoder, choice


def read_sentence_config(spec: str, *, revision: str | None = None, allow_pickle: bool = False) -> SentenceConfig:
    """The model's pooling, Dense, Normalize and tokenizer settings (default ones for a plain folder)."""
    from llmkit import loading, sentence_modules

    source = loading.resolve(spec)
    if source.kind == "dir":
        return sentence_modules.read_folder(Path(source.location), allow_pickle=allow_pickle)
    if source.kind == "hub":
        folder = sentence_modules.hub_folder(source.location, revision=revision)
        if folder is not None:
            config = sentence_modules.read_folder(folder, allow_pickle=allow_pickle)
            if config.encoder_path:
                raise UsageError(f"{spec} keeps its transformer in {config.encoder_path}/; download the model and "
                                 "give its folder with --model")
            return config
    return sentence_modules.plain(spec)  # a GGUF file, an adapter, a hub model without modules.json


class Embedder:
    """A model loaded for embedding, with its pooling head; call `vectors` or `embed` as often as needed.

    Args:
        model: alias, folder or hub id (default: the bundled MiniLM).
        pooling: pooling mode(s) instead of the model's (`sentence_modules.pooling_modes` spelling).
        normalize: L2-normalise (True/False) instead of what the model says.
        prefix: text put before every input (e.g. "query: "); None: the model's default prompt, if any.
        batch_size: texts per forward pass.
        truncate: cut inputs longer than the model's maximum (else `DataError`).
        engine: auto|onnx|transformers (auto: ONNX Runtime on the CPU where the model exports, see
            llmkit/engines/choose.py).
        device, dtype, revision, allow_pickle, trust_remote_code: as for every command (loading.py).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        pooling: str | None = None,
        normalize: bool | None = None,
        prefix: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        truncate: bool = True,
        engine: str = "auto",
        device: str = "auto",
        dtype: str = "auto",
        revision: str | None = None,
        allow_pickle: bool = False,
        trust_remote_code: bool = False,
    ) -> None:
        from llmkit.sentence_modules import pooling_modes

        if batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        self.spec = model or DEFAULT_MODEL
        modes = pooling_modes(pooling) if pooling is not None else None
        from llmkit import loading

        source = loading.resolve(self.spec)

        def load(spec: str) -> tuple[Any, Choice]:
            return _load_encoder(spec, engine, device=device, dtype=dtype, revision=revision,
                                 allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)

        if source.kind == "hub":
            # loading the model first finds out whether the hub answers (loading.py goes offline when it does not)
            self.encoder, self.choice = load(self.spec)
            config = read_sentence_config(self.spec, revision=revision, allow_pickle=allow_pickle)
        else:
            config = read_sentence_config(self.spec, revision=revision, allow_pickle=allow_pickle)
            spec = str(Path(source.location) / config.encoder_path) if config.encoder_path else self.spec
            self.encoder, self.choice = load(spec)
        head = config.head
        if modes is not None:
            head = replace(head, pooling=modes)
            if head.dense and len(modes) != len(config.head.pooling):
                raise UsageError(f"--pooling {pooling} changes the pooled size, and the model's Dense layer expects "
                                 f"{len(config.head.pooling)} mode(s); pick {len(config.head.pooling)}")
        if normalize is not None:
            head = replace(head, normalize=normalize)
        self.head: Head = head
        self.config = config
        # One line when the model said nothing and the user did not choose either (the default it used).
        self.note = config.note if modes is None and normalize is None else None
        self.prefix = config.default_prompt if prefix is None else prefix
        self.batch_size = batch_size
        self.truncate = truncate
        self.tokenizer = _fast_tokenizer(self.encoder.tokenizer)
        self.max_length = self._max_length()
        side = getattr(self.encoder.tokenizer, "truncation_side", "right")
        self.tokenizer.enable_truncation(self.max_length, strategy="longest_first", direction=side)
        self.pad_id = _pad_id(self.encoder.tokenizer, self.tokenizer)
        self.prefix_tokens = self._prefix_tokens()
        self.dimension = self._dimension()

    # --- settings --------------------------------------------------------------------------------------------

    def _max_length(self) -> int:
        limits = []
        if self.config.max_seq_length:
            limits.append(self.config.max_seq_length)
        tokenizer_limit = getattr(self.encoder.tokenizer, "model_max_length", None)
        if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:
            limits.append(tokenizer_limit)
        positions = getattr(self.encoder, "max_positions", None)
        if positions:
            config = getattr(getattr(self.encoder, "model", None), "config", None)
            offset = 2 if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else 0
            limits.append(positions - offset)
        return min(limits) if limits else DEFAULT_MAX_LENGTH

    def _prefix_tokens(self) -> int:
        """Tokens of the prefix at the start of each input (special tokens before it included), as
        sentence-transformers counts a prompt's length for pooling without it."""
        if not self.prefix:
            return 0
        encoding = self.tokenizer.encode(self.prefix)
        n = len(encoding.ids)
        return n - 1 if n and encoding.special_tokens_mask[-1] else n

    def _dimension(self) -> int:
        if self.head.dense:
            return int(self.head.dense[-1].weight.shape[0])
        hidden = self.encoder.hidden_states(self._pad([self.tokenizer.encode("a")]))
        return int(hidden.shape[-1]) * len(self.head.pooling)

    # --- the work --------------------------------------------------------------------------------------------

    def _pad(self, encodings: list[Any]) -> dict[str, np.ndarray]:
        import numpy as np

        longest = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), longest), self.pad_id, dtype=np.int64)
        types = np.zeros((len(encodings), longest), dtype=np.int64)
        mask = np.zeros((len(encodings), longest), dtype=np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n] = e.ids
            types[row, :n] = e.type_ids
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def _encode(self, texts: list[str], positions: list[int] | None = None) -> list[Tokens]:
        import numpy as np

        if self.config.do_lower_case:
            texts = [t.lower() for t in texts]
        if self.prefix:
            texts = [self.prefix + t for t in texts]
        out: list[Tokens] = []
        for start in range(0, len(texts), TOKENIZE_CHUNK):
            for i, e in enumerate(self.tokenizer.encode_batch(texts[start : start + TOKENIZE_CHUNK]), start):
                if e.overflowing and not self.truncate:
                    where = positions[i] if positions is not None else i
                    raise DataError(f"input {where + 1} is longer than the model's {self.max_length} "
                                    "tokens; shorten it or drop --no-truncate")
                out.append(Tokens(np.array(e.ids, dtype=np.int64), np.array(e.type_ids, dtype=np.int64),
                                  bool(e.overflowing)))
        return out

    def vectors(self, texts: list[str], *, positions: list[int] | None = None) -> tuple[np.ndarray, list[int], list[bool]]:
        """Vectors for texts (none empty), in order.

        Args:
            texts: the inputs.
            positions: each text's position in the whole input (for error messages).

        Returns:
            (float32 [n, dimension], tokens per text, truncated per text).
        """
        import numpy as np

        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32), [], []
        encodings = self._encode(texts, positions)
        order = sorted(range(len(texts)), key=lambda i: -len(encodings[i].ids))
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        batches = [order[k : k + self.batch_size] for k in range(0, len(order), self.batch_size)]
        padded = [self._pad([encodings[i] for i in rows]) for rows in batches]

        def pool(batch: dict[str, np.ndarray], states: np.ndarray) -> np.ndarray:
            return self.head(states, batch["attention_mask"], prefix_tokens=self.prefix_tokens)

        many = getattr(self.encoder, "many", None)
        if many is not None and len(padded) > 1:
            # every batch of the window at once: each worker thread takes the next batch when it is free (no
            # wait for the slower of a pair) and pools it there, so only one hidden-state array per worker lives
            pooled = many(padded, finish=pool)
        else:
            pooled = [pool(batch, self.encoder.hidden_states(batch)) for batch in padded]
        for rows, vectors in zip(batches, pooled, strict=True):
            out[rows] = vectors
        return out, [len(e.ids) for e in encodings], [e.overflowing for e in encodings]

    def embed(self, texts: Iterable[str]) -> Iterator[Embedding]:
        """One `Embedding` per text, in order; texts are read a window at a time.

        Raises:
            DataError: an input longer than the model's maximum with truncate=False.
        """
        window = self.batch_size * LENGTH_GROUP_WINDOW
        chunk: list[str] = []
        start = 0
        for text in texts:
            chunk.append(text)
            if len(chunk) >= window:
                yield from self._window(chunk, start)
                start += len(chunk)
                chunk = []
        if chunk:
            yield from self._window(chunk, start)

    def _window(self, texts: list[str], start: int) -> Iterator[Embedding]:
        keep = [i for i, t in enumerate(texts) if t.strip()]
        vectors, tokens, cut = self.vectors([texts[i] for i in keep], positions=[start + i for i in keep])
        done = {i: row for row, i in enumerate(keep)}
        for i, text in enumerate(texts):
            row = done.get(i)
            yield Embedding(
                text=text,
                embedding=None if row is None else vectors[row].tolist(),
                model=self.spec,
                pooling=self.head.pooling_name,
                normalized=self.head.normalize,
                dimension=self.dimension,
                tokens=0 if row is None else tokens[row],
                engine=self.choice.engine,
                engine_reason=self.choice.reason,
                truncated=False if row is None else cut[row],
                error=EMPTY if row is None else None,
            )


def embed(
    texts: Iterable[str],
    *,
    model: str | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
    prefix: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    truncate: bool = True,
    engine: str = "auto",
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    embedder: Embedder | None = None,
) -> Iterator[Embedding]:
    """Embed each text, yielding one `Embedding` per text in input order (see `Embedder` for the arguments).

    Args:
        embedder: an already loaded `Embedder` (the other model arguments are then ignored).

    Returns:
        An iterator of `Embedding`; an empty text gets `embedding=None` and `error="empty input"`.
    """
    if embedder is None:
        embedder = Embedder(model, pooling=pooling, normalize=normalize, prefix=prefix, batch_size=batch_size,
                            truncate=truncate, engine=engine, device=device, dtype=dtype, revision=revision,
                            allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    return embedder.embed(texts)
