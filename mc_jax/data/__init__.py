"""Data layer: synthetic recall tasks (MQAR, S-NIAH), text corpora, tokenizers, grain pipelines.

Tasks: token MQAR (Zoology format), stacked MQAR (pairs given as frozen embeddings; a memory-capacity probe),
RULER-style S-NIAH and packed text. Every source is random access (``len(src)``, ``src[i]``) and returns
``{"inputs": int32[L], "labels": int32[L]}`` with next-token targets and
``IGNORE_INDEX`` (-100) where there is no target. Synthetic examples are a pure
function of ``(seed, index)``, so pipelines resume without stored files.

Corpus download lives in :mod:`mc_jax.data.prepare` (``python -m mc_jax.data.prepare``),
which is not imported here.
"""

from mc_jax.data.common import IGNORE_INDEX, Example, example_rng
from mc_jax.data.mqar import MQARConfig, MQARSource, generate_mqar, mqar_example
from mc_jax.data.niah import (
    NIAHConfig,
    NIAHExample,
    NIAHSource,
    depth_length_grid,
    evenly_spaced_depths,
    generate_niah,
)
from mc_jax.data.pipeline import PipelineConfig, build_dataset, make_dataset, make_iterator
from mc_jax.data.stacked_mqar import (
    StackedMQARConfig,
    StackedMQARSource,
    pair_codes,
    pair_vocab,
    query_key_positions,
    split_pair_codes,
    stacked_mqar_example,
)
from mc_jax.data.text import (
    PackedTokenSource,
    load_tiny_corpus,
    pack_tokens,
    read_text,
    text_source,
    train_val_split,
)
from mc_jax.data.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer, load_tokenizer

__all__ = [
    "IGNORE_INDEX",
    "BPETokenizer",
    "ByteTokenizer",
    "Example",
    "MQARConfig",
    "MQARSource",
    "NIAHConfig",
    "NIAHExample",
    "NIAHSource",
    "PackedTokenSource",
    "PipelineConfig",
    "StackedMQARConfig",
    "StackedMQARSource",
    "Tokenizer",
    "build_dataset",
    "depth_length_grid",
    "evenly_spaced_depths",
    "example_rng",
    "generate_mqar",
    "generate_niah",
    "load_tiny_corpus",
    "load_tokenizer",
    "make_dataset",
    "make_iterator",
    "mqar_example",
    "pack_tokens",
    "pair_codes",
    "pair_vocab",
    "query_key_positions",
    "split_pair_codes",
    "stacked_mqar_example",
    "read_text",
    "text_source",
    "train_val_split",
]
