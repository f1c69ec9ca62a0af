"""Interpolated Witten-Bell n-gram models of a token stream: the loss reachable from the last ``n - 1`` tokens alone.

A reference for the language-modelling results (experiment E4): a neural model whose validation loss is at the level
of an n-gram model with a context of a few tokens uses no long-range context yet, and Memory Caching (a read of
older segments) cannot show a gain there.

Witten-Bell interpolation (Chen & Goodman 1998, section 2.4). For a context ``h`` of ``n - 1`` tokens and ``h'``
the same context without its oldest token:

    P_n(x | h) = (c(h x) + T(h) P_{n-1}(x | h')) / (c(h) + T(h)),

with ``c(h x)`` the count of the n-gram in the training stream, ``c(h) = sum_x c(h x)`` and ``T(h)`` the number of
distinct tokens seen after ``h``; an unseen context (``c(h) = 0``) takes ``P_{n-1}``. Order 1 is add-one over the
vocabulary. Every ``P_n(. | h)`` sums to 1 over the vocabulary, so the cross-entropy is a proper loss.

Evaluation follows the LM task's windows (:class:`mc_jax.data.PackedTokenSource`): window ``i`` predicts tokens
``i L + 1 .. i L + L`` from the window's own inputs, so a label ``j`` tokens into its window has at most ``j + 1``
tokens of context (a higher order falls back to the longest available one), as a neural model trained on windows.

    python -m mc_jax.eval.ngram data/shakespeare.txt --max-order 6 --seq-len 256 --windows 64
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from mc_jax.typing import Array, Float, Int


def _code(columns: list[np.ndarray], vocab: int) -> np.ndarray:
    """Integer codes of token tuples given column by column, oldest first (``sum_j c_j vocab^(n - 1 - j)``)."""
    out = np.zeros(len(columns[0]), np.int64)
    for column in columns:
        out = out * vocab + column
    return out


def _keys(tokens: np.ndarray, n: int, vocab: int) -> np.ndarray:
    """``[len - n + 1]`` codes of the n-grams of ``tokens``."""
    return _code([tokens[j:len(tokens) - n + 1 + j] for j in range(n)], vocab)


class NGramModel:
    """Counts of every n-gram of order ``1 .. max_order`` in ``train`` (token ids below ``vocab``)."""

    def __init__(self, train: Int[Array, " t"], max_order: int, vocab: int):
        if max_order < 1 or vocab ** max_order >= 2 ** 63:
            raise ValueError(f"max_order={max_order} with a vocabulary of {vocab}: the codes of the n-grams need "
                             f"vocab^max_order < 2^63; use max_order <= {int(63 / math.log2(vocab))}")
        train = np.asarray(train, np.int64)
        if len(train) <= max_order or train.min(initial=0) < 0 or train.max(initial=0) >= vocab:
            raise ValueError(f"train needs more than {max_order} token ids in [0, {vocab}), got {len(train)}")
        self.max_order, self.vocab, self.size = max_order, vocab, len(train)
        self.unigram = np.bincount(train, minlength=vocab).astype(np.float64)
        self.grams, self.contexts = {}, {}
        for n in range(2, max_order + 1):
            keys, counts = np.unique(_keys(train, n, vocab), return_counts=True)
            ctx, first, types = np.unique(keys // vocab, return_index=True, return_counts=True)
            self.grams[n] = (keys, counts.astype(np.float64))
            self.contexts[n] = (ctx, np.add.reduceat(counts, first).astype(np.float64), types.astype(np.float64))

    @staticmethod
    def _lookup(table: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
        at = np.minimum(np.searchsorted(table, query), len(table) - 1)
        return np.where(table[at] == query, values[at], 0.0)

    def probabilities(self, context: Int[Array, "p n1"], token: Int[Array, " p"],
                      available: Int[Array, " p"] | None = None) -> Float[Array, "orders p"]:
        """``P_n(token | context)`` for ``n = 1 .. max_order`` (rows); ``context [p, max_order - 1]`` holds the
        preceding tokens, oldest first; ``available [p]`` how many of its last entries are real (default all)."""
        context, token = np.asarray(context, np.int64), np.asarray(token, np.int64)
        available = np.full(len(token), self.max_order - 1) if available is None else np.asarray(available)
        p = (self.unigram[token] + 1.0) / (self.size + self.vocab)
        rows = [p]
        for n in range(2, self.max_order + 1):
            h = _code([context[:, col] for col in range(self.max_order - n, self.max_order - 1)], self.vocab)
            ctx, c_h, t_h = self.contexts[n]
            keys, c_hx = self.grams[n]
            count_h, types = self._lookup(ctx, c_h, h), self._lookup(ctx, t_h, h)
            count_hx = self._lookup(keys, c_hx, h * self.vocab + token)
            mixed = (count_hx + types * p) / np.maximum(count_h + types, 1.0)
            p = np.where((count_h > 0) & (available >= n - 1), mixed, p)
            rows.append(p)
        return np.stack(rows)


def window_cross_entropy(model: NGramModel, tokens: Int[Array, " t"], seq_len: int,
                         windows: int | None = None) -> Float[Array, " orders"]:
    """Mean negative log-likelihood (nats per token) of every order on the first ``windows`` windows of ``tokens``
    (all full ones if ``None``), each predicting its ``seq_len`` labels from its own inputs only."""
    tokens = np.asarray(tokens, np.int64)
    count = (len(tokens) - 1) // seq_len if windows is None else min(windows, (len(tokens) - 1) // seq_len)
    if count < 1:
        raise ValueError(f"{len(tokens)} tokens hold no window of seq_len={seq_len} (+1 label)")
    label_at = (np.arange(count)[:, None] * seq_len + np.arange(1, seq_len + 1)).ravel()
    span = model.max_order - 1
    context = np.stack([tokens[np.maximum(label_at - span + c, 0)] for c in range(span)], 1) if span else \
        np.zeros((len(label_at), 0), np.int64)
    available = (label_at - 1) % seq_len + 1  # tokens of the label's own window before it
    probs = model.probabilities(context, tokens[label_at], available)
    return -np.log(probs).mean(axis=1)


def main(argv: list[str] | None = None) -> int:
    from mc_jax.data import train_val_split
    from mc_jax.train.data import load_text_tokens

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="a text file or a directory of them (as train.task.path)")
    p.add_argument("--max-order", type=int, default=6)
    p.add_argument("--seq-len", type=int, default=256, help="the LM task's window (train.task.seq_len)")
    p.add_argument("--windows", type=int, default=None, help="validation windows scored (train.task.eval_examples)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="train.task.val_fraction")
    args = p.parse_args(argv)
    try:
        tokens, where = load_text_tokens(args.path, "byte")
        train, val = train_val_split(tokens, args.val_fraction)
        model = NGramModel(train, args.max_order, 256)
        nats = window_cross_entropy(model, val, args.seq_len, args.windows)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Witten-Bell n-gram models of {where} ({len(train):,} train / {len(val):,} validation bytes), windows of "
          f"{args.seq_len}{'' if args.windows is None else f', the first {args.windows}'}:")
    print("| order | context (bytes) | loss (nats) | bits per byte |\n|---|---|---|---|")
    for n, loss in enumerate(nats, start=1):
        print(f"| {n} | {n - 1} | {loss:.4f} | {loss / math.log(2):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
