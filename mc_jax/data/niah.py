"""Single-needle needle-in-a-haystack (RULER S-NIAH style) at byte level.

Reference: Hsieh et al., "RULER: What's the Real Context Size of Your Long-Context
Language Models?" (arXiv 2404.06654), ``scripts/data/synthetic/niah.py``.

Tokens are UTF-8 bytes (vocabulary 256, the same ids as
:class:`mc_jax.data.tokenizer.ByteTokenizer`). One example is the byte string::

    preamble + haystack[:b] + needle + " " + haystack[b:] + question + answer

of exactly ``seq_len + 1`` bytes, where ``b`` is the sentence boundary nearest to
``depth * len(haystack)``. It is shifted into next-token ``inputs``/``labels``; only the
answer bytes (the needle's value, which ends the sequence) are labelled, so a model's
teacher-forced predictions at the labelled positions score it by exact match. For
greedy decoding, the prompt is the sequence without its last ``answer_len`` bytes.

Needles: ``passkey`` (a ``passkey_digits``-digit pass key, no key word), ``number`` (a
7-digit number in [1,000,000, 9,999,999], as RULER) and ``uuid`` (a UUID4-format string
of 32 hex digits, or a plain hex string of ``uuid_hex_digits`` digits). ``number`` and
``uuid`` needles are bound to an adjective-noun key. Haystacks: ``noise`` (RULER's
repeated five-sentence filler) and ``essay`` (random sentences over a small built-in
word list, or random windows of a token array given to :class:`NIAHSource`).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from typing import Literal

import numpy as np

from mc_jax.data.common import IGNORE_INDEX, Example, check_index, example_rng, stream_id
from mc_jax.data.tokenizer import BYTE_VOCAB_SIZE

NeedleKind = Literal["passkey", "number", "uuid"]
HaystackKind = Literal["noise", "essay"]
TemplateName = Literal["ruler", "compact"]

NIAH_VOCAB_SIZE = BYTE_VOCAB_SIZE
NOISE_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

_NIAH_STREAM = stream_id("niah")
_MAX_SNAP = 64  # farthest (in bytes) a needle moves to reach a sentence boundary

ADJECTIVES = (
    "amber", "brave", "calm", "dusty", "eager", "fancy", "gentle", "hollow", "icy", "jolly",
    "keen", "lively", "misty", "noble", "odd", "proud", "quiet", "rapid", "silent", "tidy",
    "upbeat", "vivid", "wary", "young", "zesty", "bold", "crisp", "deep", "faint", "grim",
    "humble", "loyal",
)  # fmt: skip
NOUNS = (
    "anchor", "badger", "candle", "dragon", "engine", "falcon", "garden", "harbor", "island", "jacket",
    "kettle", "lantern", "meadow", "needle", "orchard", "pebble", "quarry", "river", "saddle", "tunnel",
    "valley", "walnut", "yarn", "zephyr", "bridge", "castle", "desert", "forest", "glacier", "hammer",
    "lemon", "mirror",
)  # fmt: skip
ESSAY_WORDS = (
    "the", "a", "of", "and", "to", "in", "is", "was", "that", "for", "it", "with", "as", "on", "by",
    "people", "time", "work", "world", "city", "river", "house", "story", "idea", "year", "day",
    "water", "light", "music", "school", "market", "letter", "garden", "road", "field", "friend",
    "small", "old", "new", "long", "early", "quiet", "bright", "simple", "strange", "common",
    "makes", "finds", "takes", "builds", "writes", "keeps", "follows", "changes", "remembers",
    "often", "never", "later", "again", "slowly", "together", "every", "many", "some",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class NIAHTemplate:
    """Format strings for one needle kind; ``{type}``, ``{key}`` and ``{value}`` are filled in."""

    preamble: str
    needle: str
    question: str


_TEMPLATES: dict[tuple[str, bool], NIAHTemplate] = {
    # RULER wording (singular, one needle), with the question shortened for small contexts.
    ("ruler", False): NIAHTemplate(
        preamble="A special magic {type} is hidden in the text. Memorize it.\n",
        needle="One of the special magic {type}s for {key} is: {value}.",
        question="\nWhat is the special magic {type} for {key}? The special magic {type} for {key} is: ",
    ),
    ("ruler", True): NIAHTemplate(
        preamble="A pass key is hidden in the text. Memorize it.\n",
        needle="The pass key is {value}. Remember it. {value} is the pass key.",
        question="\nWhat is the pass key? The pass key is: ",
    ),
    ("compact", False): NIAHTemplate(
        preamble="",
        needle="The magic {type} for {key} is {value}.",
        question="\nThe magic {type} for {key} is ",
    ),
    ("compact", True): NIAHTemplate(
        preamble="",
        needle="The pass key is {value}.",
        question="\nThe pass key is ",
    ),
}


@dataclasses.dataclass(frozen=True)
class NIAHConfig:
    """One S-NIAH task variant.

    Attributes:
        seq_len: length of ``inputs``/``labels`` (bytes).
        needle: ``"passkey"``, ``"number"`` or ``"uuid"``.
        haystack: ``"noise"`` (repeated filler) or ``"essay"`` (random text).
        depth: needle position as a fraction of the haystack, in [0, 1]; ``None`` draws
            it uniformly per example (for training).
        template: ``"ruler"`` (RULER wording, shortened) or ``"compact"`` (short, for
            contexts of a few hundred bytes).
        passkey_digits: number of digits of a pass key.
        uuid_hex_digits: hex digits of a ``uuid`` value; 32 gives the canonical
            8-4-4-4-12 UUID4 form (36 bytes), other lengths a plain hex string.
    """

    seq_len: int = 512
    needle: NeedleKind = "number"
    haystack: HaystackKind = "noise"
    depth: float | None = None
    template: TemplateName = "ruler"
    passkey_digits: int = 5
    uuid_hex_digits: int = 32

    def __post_init__(self) -> None:
        if self.needle not in ("passkey", "number", "uuid"):
            raise ValueError(f"needle must be 'passkey', 'number' or 'uuid', got {self.needle!r}.")
        if self.haystack not in ("noise", "essay"):
            raise ValueError(f"haystack must be 'noise' or 'essay', got {self.haystack!r}.")
        if self.template not in ("ruler", "compact"):
            raise ValueError(f"template must be 'ruler' or 'compact', got {self.template!r}.")
        if self.depth is not None and not 0.0 <= self.depth <= 1.0:
            raise ValueError(f"depth must be in [0, 1] (or None for random), got {self.depth}.")
        if not 1 <= self.passkey_digits <= 18:
            raise ValueError(f"passkey_digits must be in [1, 18], got {self.passkey_digits}.")
        if not 1 <= self.uuid_hex_digits <= 32:
            raise ValueError(f"uuid_hex_digits must be in [1, 32], got {self.uuid_hex_digits}.")
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {self.seq_len}.")
        longest_key = max(len(a) for a in ADJECTIVES) + 1 + max(len(n) for n in NOUNS)
        overhead = self._overhead("k" * longest_key)
        if self.seq_len + 1 < overhead:
            raise ValueError(
                f"seq_len={self.seq_len} leaves no room for the haystack: the {self.template!r} "
                f"template with a {self.needle!r} needle takes up to {overhead} bytes; use "
                f"seq_len >= {overhead - 1} or template='compact'."
            )

    @property
    def answer_len(self) -> int:
        """Number of answer bytes (labelled positions) per example."""
        if self.needle == "passkey":
            return self.passkey_digits
        if self.needle == "number":
            return 7
        return 36 if self.uuid_hex_digits == 32 else self.uuid_hex_digits

    @property
    def type_name(self) -> str:
        return {"passkey": "pass key", "number": "number", "uuid": "uuid"}[self.needle]

    def template_strings(self) -> NIAHTemplate:
        return _TEMPLATES[(self.template, self.needle == "passkey")]

    def _overhead(self, key: str) -> int:
        """Bytes outside the haystack: preamble, needle + separator, question, answer."""
        t, value = self.template_strings(), "0" * self.answer_len
        fmt = dict(type=self.type_name, key=key, value=value)
        parts = (t.preamble.format(**fmt), t.needle.format(**fmt) + " ", t.question.format(**fmt))
        return sum(len(p.encode("utf-8")) for p in parts) + self.answer_len


@dataclasses.dataclass(frozen=True, eq=False)
class NIAHExample:
    """A generated example with its metadata (``tokens`` has ``seq_len + 1`` bytes)."""

    tokens: np.ndarray
    key: str
    value: str
    needle_start: int  # index of the needle's first byte in ``tokens``
    needle_end: int  # one past its last byte
    depth: float  # realised depth: needle offset / haystack length
    haystack_len: int  # haystack bytes (the needle is inserted at depth * haystack_len)

    @property
    def answer(self) -> np.ndarray:
        return np.frombuffer(self.value.encode("ascii"), dtype=np.uint8).astype(np.int32)

    def to_example(self) -> Example:
        """Shift into next-token ``inputs``/``labels``; only the answer is labelled."""
        n = len(self.value)
        inputs = self.tokens[:-1].astype(np.int32)
        labels = np.full(len(inputs), IGNORE_INDEX, dtype=np.int32)
        labels[-n:] = self.tokens[-n:]
        return {"inputs": inputs, "labels": labels}


def _draw_value(config: NIAHConfig, rng: np.random.Generator) -> str:
    if config.needle == "passkey":
        d = config.passkey_digits
        return str(int(rng.integers(10 ** (d - 1), 10**d)))
    if config.needle == "number":
        return str(int(rng.integers(1_000_000, 10_000_000)))
    raw = rng.bytes(16)
    if config.uuid_hex_digits == 32:
        return str(uuid.UUID(bytes=raw, version=4))
    return raw.hex()[: config.uuid_hex_digits]


def _draw_key(rng: np.random.Generator) -> str:
    return f"{ADJECTIVES[rng.integers(len(ADJECTIVES))]}-{NOUNS[rng.integers(len(NOUNS))]}"


def _noise_haystack(n: int) -> bytes:
    unit = (NOISE_FILLER + " ").encode("ascii")
    return (unit * (n // len(unit) + 1))[:n]


def _essay_haystack(n: int, rng: np.random.Generator) -> bytes:
    out: list[bytes] = []
    size = 0
    while size < n:
        words = [ESSAY_WORDS[i] for i in rng.integers(len(ESSAY_WORDS), size=int(rng.integers(5, 13)))]
        sentence = (" ".join(words).capitalize() + ". ").encode("ascii")
        out.append(sentence)
        size += len(sentence)
    return b"".join(out)[:n]


def _corpus_haystack(n: int, corpus: np.ndarray, rng: np.random.Generator) -> bytes:
    reps = n // len(corpus) + 2
    start = int(rng.integers(len(corpus)))
    return np.tile(corpus, reps)[start : start + n].tobytes()


def _insertion_point(hay: bytes, depth: float) -> int:
    """The boundary nearest to ``depth * len(hay)``: a sentence start, else a word start.

    The haystack end is not a candidate (it is usually cut mid-sentence); if no boundary
    lies within ``_MAX_SNAP`` bytes, the exact target offset is used.
    """
    n = len(hay)
    target = round(depth * n)
    arr = np.frombuffer(hay, dtype=np.uint8)
    space = np.isin(arr, list(b" \n"))
    word = np.flatnonzero(space) + 1  # positions right after whitespace
    stop = np.isin(arr, list(b".!?"))
    sentence = word[(word >= 2) & stop[np.clip(word - 2, 0, None)]]
    for candidates in (sentence, word):
        candidates = np.concatenate([[0], candidates[candidates < n]])
        best = int(candidates[np.argmin(np.abs(candidates - target))])
        if abs(best - target) <= _MAX_SNAP:
            return best
    return target


def generate_niah(config: NIAHConfig, rng: np.random.Generator, essay_tokens: np.ndarray | None = None) -> NIAHExample:
    """Draw one S-NIAH example from ``rng`` (see the module docstring for the layout)."""
    key = "" if config.needle == "passkey" else _draw_key(rng)
    value = _draw_value(config, rng)
    fmt = dict(type=config.type_name, key=key, value=value)
    t = config.template_strings()
    preamble = t.preamble.format(**fmt).encode("utf-8")
    needle = t.needle.format(**fmt).encode("utf-8")
    question = t.question.format(**fmt).encode("utf-8")
    answer = value.encode("ascii")

    hay_len = config.seq_len + 1 - len(preamble) - len(needle) - 1 - len(question) - len(answer)
    if config.haystack == "noise":
        hay = _noise_haystack(hay_len)
    elif essay_tokens is None:
        hay = _essay_haystack(hay_len, rng)
    else:
        hay = _corpus_haystack(hay_len, essay_tokens, rng)

    depth = float(rng.uniform()) if config.depth is None else config.depth
    b = _insertion_point(hay, depth)
    text = preamble + hay[:b] + needle + b" " + hay[b:] + question + answer
    assert len(text) == config.seq_len + 1, (len(text), config.seq_len)
    start = len(preamble) + b
    return NIAHExample(
        tokens=np.frombuffer(text, dtype=np.uint8).astype(np.int32),
        key=key,
        value=value,
        needle_start=start,
        needle_end=start + len(needle),
        depth=b / hay_len if hay_len else 0.0,
        haystack_len=hay_len,
    )


class NIAHSource:
    """Random-access S-NIAH source: ``source[i]`` is ``{"inputs", "labels"}`` (int32[seq_len]).

    Args:
        config: the task variant.
        num_examples: number of examples.
        seed: stream seed; example ``i`` depends only on ``(seed, i)``.
        essay_tokens: optional byte tokens (values in [0, 256)) to cut ``essay``
            haystacks from, e.g. ``ByteTokenizer().encode(load_tiny_corpus())``.
    """

    def __init__(
        self, config: NIAHConfig, num_examples: int, seed: int = 0, essay_tokens: np.ndarray | None = None
    ) -> None:
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}.")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}.")
        if essay_tokens is not None:
            if config.haystack != "essay":
                raise ValueError("essay_tokens is only used with haystack='essay'; drop it or change the haystack.")
            arr = np.asarray(essay_tokens)
            if arr.ndim != 1 or arr.size == 0:
                raise ValueError(f"essay_tokens must be a non-empty 1-D array, got shape {arr.shape}.")
            if arr.min() < 0 or arr.max() >= NIAH_VOCAB_SIZE:
                raise ValueError("essay_tokens must be byte tokens in [0, 256); encode text with ByteTokenizer.")
            essay_tokens = arr.astype(np.uint8)
        self.config = config
        self.num_examples = num_examples
        self.seed = seed
        self.essay_tokens = essay_tokens

    def __len__(self) -> int:
        return self.num_examples

    def example(self, index: int) -> NIAHExample:
        """Example ``index`` with its metadata (key, value, needle span, realised depth)."""
        i = check_index(index, self.num_examples)
        return generate_niah(self.config, example_rng(_NIAH_STREAM, self.seed, i), self.essay_tokens)

    def __getitem__(self, index: int) -> Example:
        return self.example(index).to_example()

    def __repr__(self) -> str:
        return f"NIAHSource({self.config!r}, num_examples={self.num_examples}, seed={self.seed})"


def evenly_spaced_depths(n: int) -> tuple[float, ...]:
    """``n`` depths evenly spaced over [0, 1] (RULER uses 40; 5-11 suit small evals)."""
    if n < 2:
        raise ValueError(f"need at least 2 depths, got {n}.")
    return tuple(float(d) for d in np.linspace(0.0, 1.0, n))


def depth_length_grid(config: NIAHConfig, seq_lens: Sequence[int], depths: Sequence[float]) -> list[NIAHConfig]:
    """One config per (seq_len, depth) cell, seq_len-major, each validated."""
    return [dataclasses.replace(config, seq_len=L, depth=float(d)) for L in seq_lens for d in depths]
