"""Load a model from any checkpoint written by ``train.py``.

    run = load_checkpoint("runs/tiny_mqar/main")                 # newest checkpoint, its stored config
    run = load_checkpoint(path, step=400, expect=config)         # refuse unless the stored model config matches
    logits = run.pure.apply(run.state, tokens)

``path`` may be a run directory (``<run>/checkpoints/<step>`` inside), a ``checkpoints`` directory, or one step
directory. The model is rebuilt from the config stored **in the checkpoint**, the parameter tree is checked against it
(paths and shapes), the files are verified against the checkpoint's manifest (a damaged checkpoint is refused, naming
the file and the newest intact step), and only the parameters are read (no optimizer state).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mc_jax.models import PureModel, abstract_model
from mc_jax.train.checkpoint import (
    TOKENIZER_FILE,
    Checkpointer,
    CheckpointError,
    locate_checkpoint,
)
from mc_jax.train.config import RunConfig, config_diff
from mc_jax.train.step import merge_model, split_model


@dataclass
class LoadedRun:
    """A trained run: its config, checkpoint step, directory, and the model as ``pure`` functions of ``state``
    (``run.pure.apply(run.state, tokens)``, ``generate(run.pure, run.state, prompts, max_new_tokens=...)``)."""

    config: RunConfig
    step: int
    run_dir: Path
    pure: PureModel
    state: Any  # nnx state of the whole model (what PureModel's functions take)
    params: dict  # the plain parameter dict as stored

    @property
    def model(self):
        """The flax.nnx model (``model(tokens) -> logits``)."""
        return self.pure.merge(self.state)

    @property
    def tokenizer(self):
        """The run's text tokenizer: bytes, or the BPE file copied into the run directory at training time
        (``tokenizer.json``; else the path in the config)."""
        from mc_jax.data import load_tokenizer

        spec = self.config.train.task.tokenizer
        if spec == "byte":
            return load_tokenizer("byte")
        copy = self.run_dir / TOKENIZER_FILE
        return load_tokenizer(copy if copy.is_file() else spec)


def load_checkpoint(path: str | os.PathLike[str], *, step: int | None = None,
                    expect: RunConfig | None = None) -> LoadedRun:
    """Load the parameters of a ``train.py`` checkpoint (see the module docstring)::

        run = load_checkpoint("runs/tiny_mqar/main")      # run.config, run.step, run.pure, run.state, run.tokenizer

    ``expect``: a config the caller wants; its **model** section must equal the checkpoint's, otherwise a
    :class:`CheckpointError` lists the differences (the training section may differ).
    """
    run_dir, path_step = locate_checkpoint(path)
    if step is not None and path_step is not None and step != path_step:
        raise CheckpointError(f"--step {step} contradicts the checkpoint path (step {path_step})")
    step = step if step is not None else path_step
    ckpt = Checkpointer(run_dir, read_only=True)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise CheckpointError(f"no complete checkpoint in {ckpt.directory} (a run killed before its first "
                                  "checkpoint, or a partial save)")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise CheckpointError(f"no checkpoint for step {step} in {ckpt.directory}; available: {steps}")
        config = ckpt.read_config(step)
        if expect is not None:
            diff = config_diff(config, expect, sections=("model.",))
            if diff:
                raise CheckpointError(f"checkpoint {ckpt.step_dir(step)} was trained with a different model "
                                      "config; refusing to load it as the requested one:\n  " + "\n  ".join(diff))
        abstract = abstract_model(config.model)
        graphdef, abstract_params, rest = split_model(abstract)
        params, _, _ = ckpt.restore(step, abstract_params)
    finally:
        ckpt.close()
    model = merge_model(graphdef, params, rest)
    pure, state = PureModel.split(model)
    return LoadedRun(config=config, step=step, run_dir=run_dir, pure=pure, state=state, params=params)


__all__ = ["LoadedRun", "load_checkpoint"]
