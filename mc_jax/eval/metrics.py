"""Evaluations of a model given as ``(pure, state)`` (see :mod:`mc_jax.models.pure`).

* :func:`text_perplexity`: next-token loss / perplexity / bits per byte on a text file (byte tokens, independent
  windows of ``seq_len``).
* :func:`mqar_accuracy`: MQAR accuracy over query positions (Zoology's metric) and per-sequence exact match.
* :func:`stacked_mqar_accuracy`: the same for stacked MQAR, plus accuracy by the context position (segment) where
  the queried pair was written: the curve memory caching should flatten (EVALUATION.md, E1).
* :func:`niah_grid`: NIAH exact match over a depth x length grid. Exact match is scored teacher-forced: the answer is
  right under greedy decoding iff every answer token is the argmax given the true previous answer tokens, so the
  two agree exactly (``decode=True`` runs the real greedy decoder instead, for checking).
* :func:`generate_text`: a generation demo from a prompt (byte tokens).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mc_jax.data import (
    IGNORE_INDEX,
    ByteTokenizer,
    MQARConfig,
    MQARSource,
    NIAHConfig,
    NIAHSource,
    PackedTokenSource,
    StackedMQARConfig,
    StackedMQARSource,
    Tokenizer,
    load_tiny_corpus,
    query_key_positions,
    read_text,
    split_pair_codes,
    train_val_split,
)
from mc_jax.data.common import EVAL_SEED
from mc_jax.data.tokenizer import BYTE_VOCAB_SIZE
from mc_jax.models import PureModel, generate
from mc_jax.models.loss import token_stats


class EvalError(ValueError):
    """An evaluation that cannot run as asked (unreadable data, vocabulary mismatch, ...)."""


@partial(jax.jit, static_argnums=0)
def _stats(pure: PureModel, state: Any, inputs: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    return token_stats(pure.apply(state, inputs), labels)


def _rows_to_batches(rows: list[dict[str, np.ndarray]], batch_size: int):
    """Fixed-shape batches; the last one is padded with unlabelled rows (no recompilation, no effect on scores)."""
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        inputs = np.stack([r["inputs"] for r in chunk])
        labels = np.stack([r["labels"] for r in chunk])
        pad = batch_size - len(chunk)
        if pad and start > 0:
            inputs = np.concatenate([inputs, np.zeros((pad,) + inputs.shape[1:], inputs.dtype)])
            labels = np.concatenate([labels, np.full((pad,) + labels.shape[1:], IGNORE_INDEX, labels.dtype)])
        yield inputs, labels


def score_rows(pure: PureModel, state: Any, rows: list[dict[str, np.ndarray]], batch_size: int = 32, *,
               progress: str | None = None) -> dict[str, Any]:
    """Summed statistics over example rows: loss, token accuracy, per-row exact match. ``progress``: show a tqdm
    bar (on stderr) with this description."""
    from tqdm.auto import tqdm

    loss_sum = count = correct = 0.0
    exact: list[np.ndarray] = []
    batches = tqdm(_rows_to_batches(rows, batch_size), total=-(-len(rows) // batch_size), desc=progress,
                   disable=progress is None, unit="batch", leave=False)
    for inputs, labels in batches:
        s = jax.device_get(_stats(pure, state, jnp.asarray(inputs), jnp.asarray(labels)))
        loss_sum += float(s["loss_sum"])
        count += float(s["count"])
        correct += float(s["correct"])
        exact.append(np.asarray(s["row_exact"])[np.asarray(s["row_has_label"])])
    count_ = max(count, 1.0)
    row_exact = np.concatenate(exact) if exact else np.zeros(0, bool)
    return {
        "loss": loss_sum / count_,
        "accuracy": correct / count_,
        "exact_match": float(row_exact.mean()) if row_exact.size else float("nan"),
        "tokens": count,
        "rows": int(row_exact.size),
        "row_exact": row_exact,
    }


def _check_vocab(pure: PureModel, data_vocab: int, what: str) -> None:
    if pure.config.inputs != "tokens":
        raise EvalError(f"{what} feeds token ids, but this model reads (key, value) pair codes "
                        f"(model.inputs={pure.config.inputs!r}); evaluate it on stacked MQAR (eval.py --mqar)")
    if data_vocab > pure.config.vocab_size:
        raise EvalError(f"vocabulary mismatch: {what} uses {data_vocab} token ids but the model's vocab_size is "
                        f"{pure.config.vocab_size}")


# ---- perplexity ------------------------------------------------------------------------------------------------------
TEXT_SPLITS = ("val", "train", "all")


def text_perplexity(pure: PureModel, state: Any, path: str | os.PathLike[str] | None, *, seq_len: int = 256,
                    batch_size: int = 8, max_tokens: int | None = None, split: str = "val",
                    val_fraction: float = 0.1, tokenizer: Tokenizer | None = None,
                    progress: bool = False) -> dict[str, Any]:
    """Loss, perplexity and bits per byte of the tokens of ``path`` (a file or a directory of ``.txt``; ``None`` =
    the shipped tiny corpus), scored in independent ``seq_len`` windows.

    ``split``: ``val`` (default) scores the trailing ``val_fraction`` of the token stream, the part a run trained on
    the same file held out (:func:`mc_jax.data.train_val_split`); ``train`` the rest; ``all`` everything.
    ``max_tokens``: score at most this many tokens (from the start of the split). ``tokenizer``: bytes by default.
    """
    if split not in TEXT_SPLITS:
        raise EvalError(f"split must be one of {list(TEXT_SPLITS)}; got {split!r}")
    if max_tokens is not None and max_tokens < 1:
        raise EvalError(f"max_tokens must be a positive number of tokens; got {max_tokens}")
    try:
        text = read_text(path) if path is not None else load_tiny_corpus()
    except ValueError as err:
        raise EvalError(str(err)) from None
    where = os.fspath(path) if path is not None else "the tiny corpus"
    tok = tokenizer if tokenizer is not None else ByteTokenizer()
    byte = isinstance(tok, ByteTokenizer)
    _check_vocab(pure, tok.vocab_size, f"the byte-level text {where!r}" if byte else f"the text {where!r} ({tok!r})")
    tokens = tok.encode(text)
    if split != "all":
        try:
            train_part, val_part = train_val_split(tokens, val_fraction)
        except ValueError as err:
            raise EvalError(f"{where!r}: {err}") from None
        tokens = val_part if split == "val" else train_part
    if max_tokens is not None:
        tokens = tokens[: max_tokens + 1]
    if len(tokens) < 2:
        raise EvalError(f"{where!r} ({split} split) has fewer than 2 tokens; nothing to score")
    src = PackedTokenSource(tokens, min(seq_len, len(tokens) - 1), drop_last=False)
    s = score_rows(pure, state, [src[i] for i in range(len(src))], batch_size,
                   progress=f"text ({split})" if progress else None)
    loss = s["loss"]
    text_bytes = s["tokens"] if byte else len(tok.decode(tokens[1:]).encode("utf-8"))
    return {"tokens": s["tokens"], "loss": loss, "perplexity": float(np.exp(min(loss, 80.0))),
            "bits_per_byte": loss * s["tokens"] / max(text_bytes, 1) / np.log(2.0), "accuracy": s["accuracy"],
            "seq_len": src.seq_len, "split": split}


# ---- MQAR ------------------------------------------------------------------------------------------------------------
def mqar_accuracy(pure: PureModel, state: Any, config: MQARConfig, *, num_examples: int = 512, seed: int = EVAL_SEED,
                  batch_size: int = 64, progress: bool = False) -> dict[str, float]:
    """Accuracy over MQAR query positions (Zoology's metric) and the fraction of sequences with every query right."""
    _check_vocab(pure, config.vocab_size, "the MQAR task")
    if num_examples < 1:
        raise EvalError(f"num_examples must be positive; got {num_examples}")
    src = MQARSource(config, num_examples, seed=seed)
    s = score_rows(pure, state, [src[i] for i in range(num_examples)], batch_size,
                   progress="MQAR" if progress else None)
    return {"accuracy": s["accuracy"], "exact_match": s["exact_match"], "loss": s["loss"], "examples": num_examples,
            "queries": s["tokens"]}


def mqar_demo(pure: PureModel, state: Any, config: MQARConfig, *, seed: int = 7, index: int = 0) -> str:
    """One MQAR example: its key-value pairs and the model's answer at every query."""
    ex = MQARSource(config, index + 1, seed=seed)[index]
    logits = jax.jit(pure.apply)(state, jnp.asarray(ex["inputs"][None]))[0]
    pred = np.asarray(jnp.argmax(logits, -1))
    kv = config.num_kv_pairs
    pairs = " ".join(f"{ex['inputs'][2 * i]}->{ex['inputs'][2 * i + 1]}" for i in range(kv))
    lines = [f"context pairs (key->value): {pairs}"]
    for t in np.flatnonzero(ex["labels"] != IGNORE_INDEX):
        ok = "ok" if pred[t] == ex["labels"][t] else "WRONG"
        lines.append(f"  query key {ex['inputs'][t]:>4d} at position {t:>3d}: predicted {pred[t]:>4d}, "
                     f"true {ex['labels'][t]:>4d}  {ok}")
    return "\n".join(lines)


# ---- stacked MQAR ----------------------------------------------------------------------------------------------------
def _check_pair_tables(pure: PureModel, config: StackedMQARConfig) -> None:
    m = pure.config
    if m.inputs != "pair_table":
        raise EvalError(f"stacked MQAR feeds (key, value) pair codes, but this model reads token ids "
                        f"(model.inputs={m.inputs!r}); use the token MQAR task for it")
    if (m.num_keys, m.vocab_size) != (config.num_keys, config.num_values):
        raise EvalError(f"vocabulary mismatch: the task has {config.num_keys} keys x {config.num_values} values, the "
                        f"model's frozen tables {m.num_keys} x {m.vocab_size} (model.num_keys x model.vocab_size)")


@partial(jax.jit, static_argnums=0)
def _predict(pure: PureModel, state: Any, inputs: jax.Array) -> jax.Array:
    return jnp.argmax(pure.apply(state, inputs), axis=-1)


def stacked_mqar_accuracy(pure: PureModel, state: Any, config: StackedMQARConfig, *, num_examples: int = 512,
                          seed: int = EVAL_SEED, batch_size: int = 64, bucket: int = 8,
                          progress: bool = False) -> dict[str, Any]:
    """Accuracy over the queries of ``num_examples`` stacked-MQAR sequences, exact match, loss, and
    ``by_position``: accuracy of the queries whose pair was written at context positions ``[i, i + bucket)``, one
    entry per bucket (with ``bucket`` = the model's segment size, the accuracy per cached segment)."""
    _check_pair_tables(pure, config)
    if bucket < 1:
        raise EvalError(f"bucket must be a positive number of context positions; got {bucket}")
    if num_examples < 1:
        raise EvalError(f"num_examples must be positive; got {num_examples}")
    src = StackedMQARSource(config, num_examples, seed=seed)
    rows = [src[i] for i in range(num_examples)]
    s = score_rows(pure, state, rows, batch_size, progress="stacked MQAR" if progress else None)
    kv = config.num_kv_pairs
    hits = np.zeros(kv)
    seen = np.zeros(kv)
    for inputs, labels in _rows_to_batches(rows, batch_size):
        pred = np.asarray(_predict(pure, state, jnp.asarray(inputs)))
        where = query_key_positions(inputs, config.num_values)
        mask = labels != IGNORE_INDEX
        np.add.at(hits, where[mask], pred[mask] == labels[mask])
        np.add.at(seen, where[mask], 1)
    by_position = []
    for lo in range(0, kv, bucket):
        n = seen[lo:lo + bucket].sum()
        by_position.append({"positions": [lo, min(lo + bucket, kv) - 1], "queries": int(n),
                            "accuracy": float(hits[lo:lo + bucket].sum() / n) if n else float("nan")})
    return {"accuracy": s["accuracy"], "exact_match": s["exact_match"], "loss": s["loss"], "examples": num_examples,
            "queries": s["tokens"], "by_position": by_position}


def stacked_mqar_demo(pure: PureModel, state: Any, config: StackedMQARConfig, *, seed: int = 7, index: int = 0,
                      max_queries: int = 8) -> str:
    """One stacked-MQAR example: its first pairs and the model's answer at the first ``max_queries`` queries."""
    _check_pair_tables(pure, config)
    ex = StackedMQARSource(config, index + 1, seed=seed)[index]
    pred = np.asarray(_predict(pure, state, jnp.asarray(ex["inputs"][None])))[0]
    where = query_key_positions(ex["inputs"], config.num_values)
    kv, nv = config.num_kv_pairs, config.num_values
    keys, values = split_pair_codes(ex["inputs"][:kv], nv)
    shown = min(kv, 8)
    lines = ["context pairs (key->value): " + " ".join(f"{k}->{v}" for k, v in zip(keys[:shown], values[:shown]))
             + (f" ... ({kv} pairs)" if kv > shown else "")]
    for t in range(kv, kv + min(kv, max_queries)):
        ok = "ok" if pred[t] == ex["labels"][t] else "WRONG"
        lines.append(f"  query key {keys[where[t]]:>4d} (pair {where[t]:>2d}): predicted {pred[t]:>4d}, "
                     f"true {ex['labels'][t]:>4d}  {ok}")
    return "\n".join(lines)


# ---- NIAH ------------------------------------------------------------------------------------------------------------
def _niah_decode_exact(pure: PureModel, state: Any, src: NIAHSource, batch_size: int) -> np.ndarray:
    """Greedy-decode each answer from its prompt and compare (the slow, literal check)."""
    n_ans = src.config.answer_len
    out = []
    for start in range(0, len(src), batch_size):
        exs = [src.example(i) for i in range(start, min(start + batch_size, len(src)))]
        prompts = np.stack([e.tokens[: -n_ans] for e in exs]).astype(np.int32)
        gen = np.asarray(generate(pure, state, prompts, max_new_tokens=n_ans))[:, -n_ans:]
        out.append(np.all(gen == np.stack([e.answer for e in exs]), axis=-1))
    return np.concatenate(out)


def niah_grid(pure: PureModel, state: Any, base: NIAHConfig, lengths: Sequence[int], depths: Sequence[float], *,
              samples: int = 32, seed: int = EVAL_SEED, batch_size: int = 16, decode: bool = False,
              progress: bool = False) -> dict[str, Any]:
    """Exact match (and per-character accuracy) for every (depth, length) cell (``progress``: a tqdm bar over the
    cells on stderr).

    Returns ``{"lengths", "depths", "exact" [D, L], "char_accuracy" [D, L], "samples"}``.
    """
    from tqdm.auto import tqdm

    _check_vocab(pure, BYTE_VOCAB_SIZE, "the byte-level NIAH task")
    if samples < 1:
        raise EvalError(f"samples must be a positive number of examples per cell; got {samples}")
    exact = np.full((len(depths), len(lengths)), np.nan)
    char = np.full_like(exact, np.nan)
    cells = [(j, length, i, depth) for j, length in enumerate(lengths) for i, depth in enumerate(depths)]
    for j, length, i, depth in tqdm(cells, desc="NIAH cells", disable=not progress, leave=False):
        try:
            cfg = dataclasses.replace(base, seq_len=int(length), depth=float(depth))
        except ValueError as err:
            raise EvalError(f"NIAH cell (length {length}, depth {depth}): {err}") from None
        src = NIAHSource(cfg, samples, seed=seed)
        s = score_rows(pure, state, [src[k] for k in range(samples)], batch_size)
        exact[i, j] = _niah_decode_exact(pure, state, src, batch_size).mean() if decode else s["exact_match"]
        char[i, j] = s["accuracy"]
    return {"lengths": [int(x) for x in lengths], "depths": [float(d) for d in depths], "exact": exact,
            "char_accuracy": char, "samples": samples}


def niah_table(grid: dict[str, Any]) -> str:
    """Markdown table: rows = depth, columns = length, cells = ``exact match / per-character accuracy`` (%)."""
    ex, ch = grid["exact"], grid["char_accuracy"]
    cell = lambda e, c: f"{100 * e:.1f} / {100 * c:.1f}"
    head = "| depth \\ length | " + " | ".join(str(L) for L in grid["lengths"]) + " | mean |"
    lines = [head, "|" + "---|" * (len(grid["lengths"]) + 2)]
    for i, d in enumerate(grid["depths"]):
        lines.append(f"| {d:.2f} | " + " | ".join(cell(e, c) for e, c in zip(ex[i], ch[i]))
                     + f" | {cell(np.nanmean(ex[i]), np.nanmean(ch[i]))} |")
    lines.append("| mean | " + " | ".join(cell(e, c) for e, c in zip(np.nanmean(ex, 0), np.nanmean(ch, 0)))
                 + f" | {cell(np.nanmean(ex), np.nanmean(ch))} |")
    return "\n".join(lines)


def niah_csv(grid: dict[str, Any]) -> str:
    lines = ["depth,length,exact_match,char_accuracy,samples"]
    for i, d in enumerate(grid["depths"]):
        for j, L in enumerate(grid["lengths"]):
            lines.append(f"{d:.4f},{L},{grid['exact'][i, j]:.6f},{grid['char_accuracy'][i, j]:.6f},{grid['samples']}")
    return "\n".join(lines) + "\n"


def niah_demo(pure: PureModel, state: Any, config: NIAHConfig, *, seed: int = EVAL_SEED, index: int = 0
              ) -> dict[str, str]:
    """Greedy-decode the answer of one NIAH example from its prompt."""
    _check_vocab(pure, BYTE_VOCAB_SIZE, "the byte-level NIAH task")
    ex = NIAHSource(config, index + 1, seed=seed).example(index)
    n = config.answer_len
    prompt = ex.tokens[:-n].astype(np.int32)
    out = np.asarray(generate(pure, state, prompt[None], max_new_tokens=n))[0, -n:]
    tok = ByteTokenizer()
    return {"prompt_tail": tok.decode(prompt[-40:]), "generated": tok.decode(np.clip(out, 0, 255)),
            "answer": ex.value}


# ---- generation ------------------------------------------------------------------------------------------------------
def generate_text(pure: PureModel, state: Any, prompt: str, *, max_new_tokens: int = 64, temperature: float = 0.0,
                  top_p: float = 1.0, seed: int = 0, tokenizer: Tokenizer | None = None) -> str:
    """Continue ``prompt`` and return the generated text only (greedy at ``temperature=0``, else sampled from the
    top-p nucleus with PRNG ``seed``; bytes unless ``tokenizer`` is given)."""
    tok = tokenizer if tokenizer is not None else ByteTokenizer()
    _check_vocab(pure, tok.vocab_size, "byte-level generation" if isinstance(tok, ByteTokenizer) else
                 f"generation with {tok!r}")
    if not 0.0 < top_p <= 1.0:
        raise EvalError(f"top_p must be in (0, 1]; got {top_p}")
    if temperature < 0:
        raise EvalError(f"temperature must be >= 0 (0 = greedy); got {temperature}")
    ids = tok.encode(prompt)
    if ids.size == 0:
        raise EvalError("the generation prompt is empty")
    out = generate(pure, state, ids[None].astype(np.int32), max_new_tokens=max_new_tokens, temperature=temperature,
                   top_p=top_p, key=jax.random.key(seed))
    new = np.asarray(out)[0, ids.size:]
    return tok.decode(np.clip(new, 0, tok.vocab_size - 1))


__all__ = [
    "TEXT_SPLITS", "EvalError", "generate_text", "mqar_accuracy", "mqar_demo", "niah_csv", "niah_demo", "niah_grid",
    "niah_table", "score_rows", "stacked_mqar_accuracy", "stacked_mqar_demo", "text_perplexity",
]
