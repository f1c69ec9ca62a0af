"""Training configuration: frozen, validated dataclasses (the model side is :mod:`mc_jax.config`).

The root :class:`RunConfig` holds ``model: ModelConfig`` and ``train: TrainConfig`` (with its ``task``), so one
dotted-override syntax reaches everything (:func:`mc_jax.configs_util.apply_overrides`)::

    python train.py model.mixer.aggregation=ssc model.mixer.top_k=2 train.steps=200 \
        train.task.num_kv_pairs=16 train.task.seq_len=32

Every check runs in ``__post_init__`` and raises ``ValueError`` naming the field, so a config that constructs is one
the trainer can run. Cross-section checks (the task's vocabulary against the model's) live in ``RunConfig``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from mc_jax.config import MIXER_KINDS, MixerConfig, ModelConfig
from mc_jax.configs_util import apply_overrides, from_dict, load_preset, to_dict
from mc_jax.data.common import EVAL_SEED
from mc_jax.data.tokenizer import BYTE_VOCAB_SIZE
from mc_jax.parallel.mesh import MeshConfig

TASKS = ("mqar", "stacked_mqar", "text", "niah")
RECALL_TASKS = ("mqar", "stacked_mqar")  # scored by accuracy over query positions
BYTE_VOCAB = BYTE_VOCAB_SIZE  # the byte tokenizer (text) and the NIAH task use bytes
DEFAULT_PRESET = "train_tiny_mqar"
DEFAULT_OUT_DIR = "runs/run"  # TrainConfig's default; load_run_config turns it into runs/<preset name>

# Fields that may differ between a checkpoint and the config that resumes it: they change neither the math nor the
# data order, so a resumed run still reproduces the uninterrupted one.
# The mesh may change too: a checkpoint restores onto any mesh shape (the math is the same up to float summation
# order, so a resumed run on another mesh matches the uninterrupted one to float32 rounding, not bit for bit).
RESUMABLE_CHANGES = (
    "train.eval_every", "train.ckpt_every", "train.ckpt_minutes", "train.keep", "train.log_every", "train.out_dir",
    "train.baseline", "mesh.data", "mesh.fsdp", "mesh.tensor",
)
# Model fields in which a run started with ``--init-from`` may differ from its checkpoint: the caching settings of
# the mixer (and ``none`` <-> ``mc`` layers, i.e. adding caching to a model trained without it). Parameters present
# in both models keep the checkpoint's values; new ones (e.g. the GRM router) start from their initialisation.
INIT_FROM_CHANGES = (
    "model.mixer.kind", "model.pattern", "model.mixer.aggregation", "model.mixer.segmentation",
    "model.mixer.segment_size", "model.mixer.init", "model.mixer.top_k", "model.mixer.pool", "model.mixer.router_init",
)
CACHING_KINDS = ("none", "mc")  # the mixer kinds --init-from may swap


def _positive(name: str, value: Any, *, integer: bool = True, zero_ok: bool = False) -> None:
    kinds = int if integer else (int, float)
    bad = (isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or value < 0
           or (value == 0 and not zero_ok))
    if bad:
        raise ValueError(f"{name} must be a {'non-negative' if zero_ok else 'positive'} "
                         f"{'int' if integer else 'finite number'}; got {value!r}")


@dataclass(frozen=True)
class TaskConfig:
    """What to train on.

    Attributes:
        kind: ``mqar`` (token multi-query associative recall, Zoology format), ``stacked_mqar`` (the pairs given
            as frozen embeddings, :mod:`mc_jax.data.stacked_mqar`; needs ``model.inputs=pair_table``), ``text``
            (next-byte prediction on a text file) or ``niah`` (byte-level single-needle-in-a-haystack; loss on the
            answer only).
        seq_len: tokens per training sequence (``stacked_mqar``: must be ``2 * num_kv_pairs``).
        vocab_size: MQAR vocabulary ``V`` (keys ``[1, V/2)``, values ``[V/2, V)``); must not exceed the model's.
            ``stacked_mqar``: the number of values (answer classes), equal to ``model.vocab_size``.
        num_kv_pairs: MQAR key-value pairs per sequence.
        num_keys: ``stacked_mqar``: rows of the frozen key table, equal to ``model.num_keys``.
        min_kv_pairs: ``stacked_mqar``: training examples draw their number of pairs from
            ``[min_kv_pairs, num_kv_pairs]`` (0 = always ``num_kv_pairs``); held-out examples always have
            ``num_kv_pairs``.
        power_a: MQAR query-gap power law (Zoology 0.01).
        random_non_queries: MQAR fills the non-query positions with random tokens (Zoology default).
        eval_examples: fixed held-out examples (MQAR / NIAH) scored at every evaluation.
        eval_seed: seed of the held-out stream; must differ from ``train.seed`` (disjoint streams).
        path: ``text``: a text file or a directory of ``.txt`` files; ``""`` = the tiny corpus shipped in the
            package.
        val_fraction: ``text``: trailing fraction of the token stream held out for validation.
        tokenizer: ``text``: ``byte`` (UTF-8 bytes, 256 ids) or the path of a BPE tokenizer file trained by
            ``mc-prepare --bpe-vocab N`` (``model.vocab_size`` must be at least its vocabulary).
        needle, haystack, template: ``niah`` task variant (see :class:`mc_jax.data.NIAHConfig`).
    """

    kind: str = "mqar"
    seq_len: int = 64
    vocab_size: int = BYTE_VOCAB_SIZE
    num_kv_pairs: int = 8
    num_keys: int = 1024
    min_kv_pairs: int = 0
    power_a: float = 0.01
    random_non_queries: bool = True
    eval_examples: int = 512
    eval_seed: int = EVAL_SEED
    path: str = ""
    val_fraction: float = 0.1
    tokenizer: str = "byte"
    needle: str = "passkey"
    haystack: str = "noise"
    template: str = "compact"

    def __post_init__(self) -> None:
        if self.kind not in TASKS:
            raise ValueError(f"train.task.kind={self.kind!r} is not one of {list(TASKS)}")
        for name in ("seq_len", "vocab_size", "num_kv_pairs", "num_keys", "eval_examples"):
            _positive(f"train.task.{name}", getattr(self, name))
        _positive("train.task.eval_seed", self.eval_seed, zero_ok=True)
        _positive("train.task.min_kv_pairs", self.min_kv_pairs, zero_ok=True)
        _positive("train.task.power_a", self.power_a, integer=False, zero_ok=True)
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"train.task.val_fraction must be in (0, 1); got {self.val_fraction}")
        if not self.tokenizer:
            raise ValueError("train.task.tokenizer must be 'byte' or the path of a BPE tokenizer file")
        if self.tokenizer != "byte" and self.kind != "text":
            raise ValueError(f"train.task.tokenizer={self.tokenizer!r} applies to train.task.kind=text only (the "
                             f"{self.kind!r} task makes its own token ids); leave it at 'byte'")
        if self.kind == "mqar":
            self.mqar_config()  # MQAR's own checks (even length, V > L, room for the pairs)
        if self.kind == "stacked_mqar":
            self.stacked_mqar_config(train=True)
        if self.kind == "niah":
            self.niah_config()

    @property
    def data_vocab(self) -> int:
        """Input ids the data can produce (ids lie in ``[0, data_vocab)``)."""
        if self.kind == "stacked_mqar":
            return self.stacked_mqar_config().input_vocab
        return self.vocab_size if self.kind == "mqar" else BYTE_VOCAB

    def stacked_mqar_config(self, *, train: bool = False):
        """The stacked-MQAR task; ``train=True``: with the ``min_kv_pairs`` curriculum (held-out: fixed size)."""
        from mc_jax.data import StackedMQARConfig

        if self.seq_len != 2 * self.num_kv_pairs:
            raise ValueError(f"train.task (stacked_mqar): seq_len must be 2 * num_kv_pairs = {2 * self.num_kv_pairs} "
                             f"(kv context pairs, then kv queries); got seq_len={self.seq_len}")
        try:
            return StackedMQARConfig(num_kv_pairs=self.num_kv_pairs, num_keys=self.num_keys,
                                     num_values=self.vocab_size,
                                     min_kv_pairs=(self.min_kv_pairs or None) if train else None)
        except ValueError as err:
            raise ValueError(f"train.task (stacked_mqar): {err}") from None

    def mqar_config(self):
        from mc_jax.data import MQARConfig

        try:
            return MQARConfig(vocab_size=self.vocab_size, seq_len=self.seq_len, num_kv_pairs=self.num_kv_pairs,
                              power_a=self.power_a, random_non_queries=self.random_non_queries)
        except ValueError as err:
            raise ValueError(f"train.task (mqar): {err}") from None

    def niah_config(self, seq_len: int | None = None, depth: float | None = None):
        from mc_jax.data import NIAHConfig

        try:
            return NIAHConfig(seq_len=seq_len or self.seq_len, needle=self.needle, haystack=self.haystack,
                              depth=depth, template=self.template)
        except ValueError as err:
            raise ValueError(f"train.task (niah): {err}") from None


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, logging and checkpointing.

    Attributes:
        steps: optimizer updates.
        lr: peak learning rate; linear warm-up over ``warmup`` steps from 0, then cosine decay to
            ``lr * min_lr_ratio`` at ``steps``.
        batch_size: sequences per update (all micro-batches together).
        accum: gradient-accumulation micro-batches per update (``batch_size`` must be a multiple); the update equals
            the one of the whole batch.
        clip: global-norm gradient clipping (``0`` disables it).
        weight_decay: AdamW decoupled weight decay, applied to weight matrices and embeddings only (not to norms,
            biases or learned initial memories, see :func:`mc_jax.train.optim.decay_mask`).
        b1, b2, eps: AdamW moments.
        eval_every: held-out evaluation every this many steps (and at the end); 0 = only at the end.
        ckpt_every: checkpoint every this many steps (and at the end); 0 = only at the end.
        ckpt_minutes: also checkpoint when this many minutes have passed since the last checkpoint (0 = off);
            SIGTERM / SIGINT save one at the next step boundary whatever these are.
        keep: checkpoints kept (the newest).
        log_every: metrics record every this many steps (the progress bar updates every step).
        out_dir: output root; runs go to ``<out_dir>/main`` (and one directory per baseline, see
            :func:`baseline_run_name`). Presets that do not set it write to ``runs/<preset name>``.
        seed: model initialisation, data order and training stream.
        baseline: comma-separated mixer kinds to train the same way for comparison (``none`` = the model without
            caching, ``attention`` = softmax attention, the recall ceiling); ``""`` trains the main model only.
        task: what to train on.
    """

    steps: int = 1600
    lr: float = 1e-2
    warmup: int = 100
    min_lr_ratio: float = 0.0
    batch_size: int = 16
    accum: int = 1
    clip: float = 1.0
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-8
    eval_every: int = 400
    ckpt_every: int = 400
    ckpt_minutes: float = 0.0
    keep: int = 2
    log_every: int = 10
    out_dir: str = DEFAULT_OUT_DIR
    seed: int = 0
    baseline: str = "none"
    task: TaskConfig = field(default_factory=TaskConfig)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "accum", "keep", "log_every"):
            _positive(f"train.{name}", getattr(self, name))
        for name in ("warmup", "eval_every", "ckpt_every", "seed"):
            _positive(f"train.{name}", getattr(self, name), zero_ok=True)
        _positive("train.lr", self.lr, integer=False)
        _positive("train.eps", self.eps, integer=False)
        for name in ("clip", "weight_decay", "ckpt_minutes"):
            _positive(f"train.{name}", getattr(self, name), integer=False, zero_ok=True)
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1]; got {self.min_lr_ratio}")
        for name in ("b1", "b2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"train.{name} must be in [0, 1); got {getattr(self, name)}")
        if self.warmup >= self.steps:
            raise ValueError(f"train.warmup={self.warmup} must be smaller than train.steps={self.steps}")
        if self.batch_size % self.accum:
            raise ValueError(f"train.batch_size={self.batch_size} must be a multiple of train.accum={self.accum}")
        kinds = self.baselines
        bad = [k for k in kinds if k not in MIXER_KINDS]
        if bad or len(set(kinds)) != len(kinds):
            raise ValueError(f"train.baseline={self.baseline!r} must be '' (no baseline) or distinct mixer kinds from "
                             f"{list(MIXER_KINDS)}, comma separated (e.g. none,attention)")
        if not self.out_dir:
            raise ValueError("train.out_dir must not be empty")
        if not isinstance(self.task, TaskConfig):
            raise ValueError(f"train.task must be a TaskConfig; got {type(self.task).__name__}")
        if self.task.kind != "text" and self.task.eval_seed == self.seed:
            raise ValueError(f"train.task.eval_seed ({self.task.eval_seed}) must differ from train.seed (the "
                             "held-out examples would be training examples)")

    @property
    def baselines(self) -> tuple[str, ...]:
        """The mixer kinds of ``baseline``, in order (``()`` for none)."""
        return tuple(k.strip() for k in self.baseline.split(",") if k.strip())

    @property
    def micro_batch(self) -> int:
        return self.batch_size // self.accum

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.task.seq_len


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs: the model, its training and the device mesh. Saved with every checkpoint.

    ``mesh`` (:class:`~mc_jax.parallel.mesh.MeshConfig`): ``mesh.data`` x ``mesh.fsdp`` x ``mesh.tensor`` devices;
    all 1 (the default) is the single-device program. Heads and MLP width must divide by ``mesh.tensor`` and the
    micro-batch by ``mesh.data x mesh.fsdp`` (checked here where the sizes are known, else when the mesh is built).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.model, ModelConfig) or not isinstance(self.train, TrainConfig):
            raise ValueError("RunConfig needs model: ModelConfig and train: TrainConfig")
        if not isinstance(self.mesh, MeshConfig):
            raise ValueError(f"mesh must be a MeshConfig; got {type(self.mesh).__name__}")
        self.mesh.check_model(self.model)
        self.mesh.check_batch(self.train.micro_batch)
        task, model = self.train.task, self.model
        if (task.kind == "stacked_mqar") != (model.inputs == "pair_table"):
            raise ValueError(f"train.task.kind={task.kind!r} needs "
                             f"model.inputs={'pair_table' if task.kind == 'stacked_mqar' else 'tokens'!r}; got "
                             f"model.inputs={model.inputs!r} (stacked MQAR feeds (key, value) pairs through frozen "
                             "tables, every other task feeds token ids)")
        if task.kind == "stacked_mqar":
            for name in ("num_keys", "vocab_size"):
                if getattr(task, name) != getattr(model, name):
                    raise ValueError(f"vocabulary mismatch: train.task.{name}={getattr(task, name)} but "
                                     f"model.{name}={getattr(model, name)}; the frozen tables of the model must have "
                                     "the task's keys and values: set both to the same value")
            return
        data_vocab, model_vocab = task.data_vocab, model.vocab_size
        if task.tokenizer != "byte":
            return  # a BPE vocabulary is checked against the model when the tokenizer file is read
        if data_vocab > model_vocab:
            source = (f"the MQAR task uses ids up to train.task.vocab_size={data_vocab}"
                      if self.train.task.kind == "mqar" else f"the {self.train.task.kind!r} task uses byte ids (256)")
            raise ValueError(f"vocabulary mismatch: {source} but model.vocab_size={model_vocab}; make "
                             "model.vocab_size at least the data's vocabulary")

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)


# ---- helpers -------------------------------------------------------------------------------------------------------
def config_to_dict(config: RunConfig) -> dict[str, Any]:
    return to_dict(config)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    try:
        return from_dict(RunConfig, data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"stored config is not a valid RunConfig: {err}") from None


def flat_dict(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model.mixer.kind": "mc", ...}`` for a nested dict or dataclass."""
    if dataclasses.is_dataclass(data):
        data = to_dict(data)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat_dict(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_diff(stored: RunConfig | dict, requested: RunConfig | dict, *, ignore: tuple[str, ...] = (),
                sections: tuple[str, ...] | None = None) -> list[str]:
    """Human-readable differences ``key: stored -> requested`` (keys under ``ignore`` skipped; only keys starting with
    one of ``sections`` when given)."""
    a, b = flat_dict(stored), flat_dict(requested)
    out = []
    for key in sorted(set(a) | set(b)):
        if key in ignore or (sections is not None and not key.startswith(sections)):
            continue
        va, vb = a.get(key, "<missing>"), b.get(key, "<missing>")
        if va != vb:
            out.append(f"{key}: {va!r} (checkpoint) vs {vb!r} (requested)")
    return out


def baseline_run_name(kind: str) -> str:
    """Directory (and table row) of a baseline run: ``baseline`` for ``none`` (the model without caching), else the
    mixer kind (``attention``, ``sliding_window``, ...)."""
    return "baseline" if kind == "none" else kind


def baseline_config(config: RunConfig, kind: str | None = None) -> RunConfig | None:
    """A comparison run: the same model and training with every ``mc`` layer replaced by ``kind`` (default: the
    first of ``train.baseline``; ``None`` when ``train.baseline`` is empty and no kind is given)."""
    kind = kind if kind is not None else next(iter(config.train.baselines), None)
    if not kind:
        return None
    model = config.model
    pattern = tuple(kind if k == "mc" else k for k in model.pattern)
    mixer = model.mixer
    changes: dict[str, Any] = {"kind": kind if mixer.kind == "mc" else mixer.kind}
    if kind != "mc":  # caching-only settings are meaningless without caching; keep them valid
        changes.update(aggregation="residual" if mixer.aggregation == "ssc" else mixer.aggregation, top_k=None)
    if kind == "sliding_window" and mixer.window is None:
        changes["window"] = mixer.segment_size
    new_model = dataclasses.replace(model, pattern=pattern, mixer=dataclasses.replace(mixer, **changes))
    if new_model == model:
        raise ValueError(f"train.baseline={kind!r} gives the same model as the main run (no 'mc' layer to replace)")
    return RunConfig(model=new_model, train=dataclasses.replace(config.train, baseline=""), mesh=config.mesh)


def baseline_configs(config: RunConfig) -> list[tuple[str, RunConfig]]:
    """``[(run name, config)]`` for every kind of ``train.baseline``, in order."""
    return [(baseline_run_name(kind), baseline_config(config, kind)) for kind in config.train.baselines]


def load_run_config(preset: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The preset (default :data:`DEFAULT_PRESET`; see :func:`mc_jax.configs_util.load_preset`) with dotted
    overrides applied.

    A preset may define a ``RunConfig`` or a bare ``ModelConfig`` (used with the default ``TrainConfig``). A preset
    that leaves ``train.out_dir`` at its default writes to ``runs/<preset name>`` (one directory per preset).
    """
    name = preset or DEFAULT_PRESET
    base = load_preset(name)
    if isinstance(base, ModelConfig):
        base = RunConfig(model=base)
    if not isinstance(base, RunConfig):
        raise ValueError(f"preset {preset!r} defines a {type(base).__name__}, not a RunConfig or ModelConfig")
    if base.train.out_dir == DEFAULT_OUT_DIR:
        stem = os.path.splitext(os.path.basename(name))[0]
        base = base.replace(train=dataclasses.replace(base.train, out_dir=f"runs/{stem}"))
    return apply_overrides(base, list(overrides))


def describe_model(model: ModelConfig) -> str:
    """Short label, e.g. ``mc[linear+grm, C=8, independent]`` or ``none[linear]``."""
    m: MixerConfig = model.mixer
    kinds = model.layer_pattern
    parts = []
    for kind in dict.fromkeys(kinds):
        if kind == "mc":
            extra = f", top_k={m.top_k}" if m.aggregation == "ssc" else ""
            parts.append(f"mc[{m.memory}+{m.aggregation}, C={m.segment_size} {m.segmentation}, {m.init}{extra}]")
        elif kind == "none":
            parts.append(f"none[{m.memory}, no caching]")
        elif kind == "sliding_window":
            parts.append(f"sliding_window[{m.window}]")
        else:
            parts.append(kind)
    return " / ".join(parts)


__all__ = [
    "BYTE_VOCAB", "CACHING_KINDS", "DEFAULT_OUT_DIR", "DEFAULT_PRESET", "INIT_FROM_CHANGES", "RECALL_TASKS",
    "RESUMABLE_CHANGES", "RunConfig", "TASKS", "TaskConfig", "TrainConfig", "baseline_config", "baseline_configs",
    "baseline_run_name", "config_diff", "config_from_dict", "config_to_dict", "describe_model", "flat_dict",
    "load_run_config",
]
