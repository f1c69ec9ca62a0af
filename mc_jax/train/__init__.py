"""Training: configs, optimizer, the jit-compiled step, checkpoints, metrics and the loop.

    from mc_jax.train import load_run_config, train
    config = load_run_config(None, ["train.steps=200"])          # the train_tiny_mqar preset + overrides
    result = train(config, "runs/demo/main")                     # result.final_eval["accuracy"]

The command line is ``python train.py`` (:mod:`mc_jax.train.cli`).
"""

from mc_jax.train.checkpoint import Checkpointer, CheckpointError, read_run_file
from mc_jax.train.config import (
    RunConfig,
    TaskConfig,
    TrainConfig,
    baseline_config,
    config_diff,
    describe_model,
    load_run_config,
)
from mc_jax.train.data import DataError, TaskData, build_task_data
from mc_jax.train.loop import (
    EXIT_PREEMPTED,
    NonFiniteLossError,
    Preempted,
    RunDirError,
    TrainError,
    TrainResult,
    check_run_dir,
    train,
)
from mc_jax.train.metrics import JobProgress, MetricsLogger, read_metrics
from mc_jax.train.optim import decay_mask, make_optimizer, make_schedule
from mc_jax.train.step import (
    evaluate_batches,
    make_train_step,
    merge_model,
    reshape_for_accum,
    split_model,
)

__all__ = [
    "EXIT_PREEMPTED",
    "CheckpointError",
    "Checkpointer",
    "DataError",
    "JobProgress",
    "MetricsLogger",
    "NonFiniteLossError",
    "Preempted",
    "RunConfig",
    "RunDirError",
    "TaskConfig",
    "TaskData",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "baseline_config",
    "build_task_data",
    "check_run_dir",
    "config_diff",
    "decay_mask",
    "describe_model",
    "evaluate_batches",
    "load_run_config",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "merge_model",
    "read_metrics",
    "read_run_file",
    "reshape_for_accum",
    "split_model",
    "train",
]
