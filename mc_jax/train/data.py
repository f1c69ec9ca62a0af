"""Training and held-out data for a :class:`~mc_jax.train.config.TaskConfig`.

Training batches come from a resumable grain iterator (``get_state`` is stored with every checkpoint); the held-out
set is a fixed list of numpy batches built once. Synthetic examples (MQAR, NIAH) are pure functions of
``(seed, index)``; the training stream uses ``train.seed`` and the held-out one ``task.eval_seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grain
import numpy as np

from mc_jax.data import (
    MQARSource,
    NIAHSource,
    PackedTokenSource,
    StackedMQARSource,
    load_tiny_corpus,
    load_tokenizer,
    make_dataset,
    make_iterator,
    read_text,
    train_val_split,
)
from mc_jax.train.config import RunConfig

SYNTHETIC_TRAIN_EXAMPLES = 1 << 30  # virtual size of a synthetic training stream (examples are generated on demand)


class DataError(ValueError):
    """Unusable training data (empty or unreadable file, too little text, vocabulary mismatch)."""


@dataclass
class TaskData:
    """The training dataset (batched, infinite) and the held-out batches."""

    train: grain.MapDataset
    eval_batches: list[dict[str, np.ndarray]]
    description: str

    def iterator(self, state: dict[str, Any] | None = None) -> grain.DatasetIterator:
        return make_iterator(self.train, state)


def _batches(source: Any, batch_size: int, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    n = len(source) if limit is None else min(limit, len(source))
    rows = [source[i] for i in range(n)]
    out = []
    for start in range(0, n, batch_size):
        chunk = rows[start:start + batch_size]
        out.append({k: np.stack([r[k] for r in chunk]) for k in ("inputs", "labels")})
    return out


def load_text_tokens(path: str, tokenizer: str = "byte") -> tuple[np.ndarray, str]:
    """Tokens of ``path`` (``""`` = the shipped tiny corpus) under ``tokenizer`` (``byte`` or a BPE file, see
    :func:`mc_jax.data.load_tokenizer`) and a description; :class:`DataError` when the file is missing, unreadable
    or empty."""
    try:
        text = read_text(path) if path else load_tiny_corpus()
        tok = load_tokenizer(tokenizer)
    except (ValueError, ImportError) as err:
        raise DataError(str(err)) from None
    if not text.strip():
        raise DataError(f"no text in {path or 'the tiny corpus'}")
    return tok.encode(text), (path or "tiny corpus")


def build_task_data(config: RunConfig, eval_batch_size: int | None = None,
                    shard: tuple[int, int] = (0, 1)) -> TaskData:
    """Datasets for ``config.train.task``; raises :class:`DataError` for unusable data.

    ``shard = (index, count)``: this process loads the strided shard ``source[index::count]`` in batches of
    ``train.batch_size / count`` rows (see :func:`mc_jax.train.sharding.process_rows`). The ``count`` shards'
    batch ``j`` together hold exactly the rows of the single-process batch ``j`` (unshuffled sources), so a
    multi-host run sees the same global batches. The held-out batches are whole on every process.
    """
    train, task = config.train, config.train.task
    index, count = shard
    if train.batch_size % count:
        raise DataError(f"train.batch_size={train.batch_size} does not split into {count} per-process data shards")
    eval_bs = eval_batch_size or max(train.micro_batch, 32)
    if task.data_vocab > config.model.input_vocab:  # RunConfig checks this too; keep the error here for direct use
        raise DataError(f"vocabulary mismatch: the data uses {task.data_vocab} ids, the model reads "
                        f"{config.model.input_vocab} (model.vocab_size={config.model.vocab_size})")
    if task.kind == "mqar":
        mqar = task.mqar_config()
        source = MQARSource(mqar, SYNTHETIC_TRAIN_EXAMPLES, seed=train.seed)
        held = MQARSource(mqar, task.eval_examples, seed=task.eval_seed)
        desc = (f"MQAR L={task.seq_len} kv={task.num_kv_pairs} V={task.vocab_size} "
                f"(eval: {task.eval_examples} fixed examples)")
        shuffle = False
    elif task.kind == "stacked_mqar":
        source = StackedMQARSource(task.stacked_mqar_config(train=True), SYNTHETIC_TRAIN_EXAMPLES, seed=train.seed)
        held = StackedMQARSource(task.stacked_mqar_config(), task.eval_examples, seed=task.eval_seed)
        kv = f"{task.min_kv_pairs}-{task.num_kv_pairs}" if 0 < task.min_kv_pairs < task.num_kv_pairs else ""
        desc = (f"stacked MQAR kv={task.num_kv_pairs} (L={task.seq_len}{', training kv=' + kv if kv else ''}), "
                f"{task.num_keys} keys x {task.vocab_size} values (eval: {task.eval_examples} fixed examples)")
        shuffle = False
    elif task.kind == "niah":
        source = NIAHSource(task.niah_config(), SYNTHETIC_TRAIN_EXAMPLES, seed=train.seed)
        held = NIAHSource(task.niah_config(), task.eval_examples, seed=task.eval_seed)
        desc = f"NIAH {task.needle}/{task.haystack} L={task.seq_len}"
        shuffle = False
    else:
        tokens, where = load_text_tokens(task.path, task.tokenizer)
        if task.tokenizer != "byte":
            vocab = load_tokenizer(task.tokenizer).vocab_size
            if vocab > config.model.vocab_size:
                raise DataError(f"vocabulary mismatch: the tokenizer {task.tokenizer} has {vocab} ids but "
                                f"model.vocab_size={config.model.vocab_size}; set model.vocab_size={vocab}")
        if tokens.max(initial=0) >= config.model.vocab_size:
            raise DataError(f"vocabulary mismatch: {where} has token id {int(tokens.max())} but "
                            f"model.vocab_size={config.model.vocab_size}")
        try:
            train_tokens, val_tokens = train_val_split(tokens, task.val_fraction)
            source = PackedTokenSource(train_tokens, task.seq_len)
            held = PackedTokenSource(val_tokens, task.seq_len, drop_last=False)
        except ValueError as err:
            raise DataError(f"text data {where!r} ({len(tokens)} tokens) is unusable at "
                            f"train.task.seq_len={task.seq_len}: {err}") from None
        kind = "byte" if task.tokenizer == "byte" else "BPE"
        desc = f"text {where}: {len(train_tokens)} train / {len(val_tokens)} val {kind} tokens, L={task.seq_len}"
        shuffle = True
    try:
        dataset = make_dataset(source, batch_size=train.batch_size // count, seed=train.seed, shuffle=shuffle,
                               num_epochs=None, shard_index=index, shard_count=count)
    except ValueError as err:
        raise DataError(f"cannot batch the training data: {err}") from None
    limit = task.eval_examples if task.kind == "text" else None
    return TaskData(dataset, _batches(held, eval_bs, limit), desc)


__all__ = ["DataError", "TaskData", "build_task_data", "load_text_tokens"]
