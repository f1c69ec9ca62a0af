"""Evaluation: load any ``train.py`` checkpoint; perplexity, MQAR accuracy, NIAH depth x length grids (table, CSV and
a matplotlib heatmap, :mod:`mc_jax.plots`), generation demos. The command line is ``mc-eval`` / ``python eval.py``
(:mod:`mc_jax.eval.cli`)."""

from mc_jax.eval.load import LoadedRun, load_checkpoint
from mc_jax.eval.metrics import (
    EvalError,
    generate_text,
    mqar_accuracy,
    mqar_demo,
    niah_csv,
    niah_demo,
    niah_grid,
    niah_table,
    score_rows,
    stacked_mqar_accuracy,
    stacked_mqar_demo,
    text_perplexity,
)

__all__ = [
    "EvalError", "LoadedRun", "generate_text", "load_checkpoint", "mqar_accuracy", "mqar_demo", "niah_csv",
    "niah_demo", "niah_grid", "niah_table", "score_rows", "stacked_mqar_accuracy", "stacked_mqar_demo",
    "text_perplexity",
]
