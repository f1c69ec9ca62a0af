"""The suite's budget: planned runs per experiment and their estimated wall time (``--estimate``), from a cost table.

One training run costs ``steps x (batch / 64) x length(L) x memory x kind x model`` reference steps, plus its
evaluation (forward passes at a third of a training step's cost per sequence) and :data:`RUN_OVERHEAD` (compiling,
data, checkpoints). The constants:

* :data:`REFERENCE`: the calibration point, a linear-memory GRM run on stacked MQAR (1 layer, d_model 32), 1500
  steps of 64 sequences at kv = 32 (L = 64): ~105 s alone on the idle 2-core CPU (issue 16), overhead included.
* :data:`MEMORY_FACTOR`: deep memories train ~4-6x slower than the linear one (issue 16: Titans ~6-9k tokens/s
  against ~36k); DeltaNet 51-57 ms per step against 14-25 ms (EVALUATION.md section 7.1).
* :data:`KIND_FACTOR`: the uncached layer and attention against the cached one (EVALUATION.md 7.1: 21-25 s and
  28 s against 31-37 s).
* length: the cached layer's state pass is O(L) and its read O(L N) with N = L / C segments, but at these widths
  a step is mostly per-op overhead: ``length(L) = (L / 64) (0.9 + 0.0125 L / C)``, fitted to two runs alone on the
  idle CPU at L = 64 (C = 8: 105 s; C = 4: 115 s); the uncached layer, sliding-window attention and attention
  ``L / 64``: at L <= 256 softmax attention's T^2 term is not what a step costs here (measured alone, 60 steps of
  the tiny preset at L = 256: attention 27.4k tokens/s, the cached layer 17.8k, the uncached one 18.2k).
* model size: ``num_layers x sqrt(d_model / 32)``, x1.1 with the MLP sub-layer (at these widths the per-op
  overhead, not the FLOPs, dominates), fitted to the tiny preset measured alone on the idle CPU (2 layers, d_model
  64, MLP): 17.8k tokens/s at L = 256 (byte LM, C = 32), 20.8k at L = 128 (NIAH, linear memory); the earlier
  ``num_layers x d_model / 32 x 1.3`` overestimated those runs 1.67x.
* :data:`SHARED_SLOWDOWN`: two jobs on the two cores each run ~1.7x slower than alone (the preset's 2.5-3.5 min
  with another run sharing against 105 s alone).

The wall time schedules each phase (learning-rate sweep, reported seeds, post-training jobs) on ``jobs`` workers,
longest run first. These are planning numbers (+-50%), not measurements.
"""

from __future__ import annotations

import dataclasses
import heapq
from dataclasses import dataclass

from mc_jax.experiments.definitions import TITLES, Plan, plan_of
from mc_jax.experiments.jobs import VALIDATION_SEED, Job, model_rates

REFERENCE = {"seconds": 105.0, "steps": 1500, "seq_len": 64, "batch": 64}
MEMORY_FACTOR = {"linear": 1.0, "gated_linear": 1.1, "swla": 1.3, "delta": 2.5, "dla": 5.0, "titans": 5.0}
KIND_FACTOR = {"mc": 1.0, "none": 0.7, "attention": 0.9, "sliding_window": 0.9}
RUN_OVERHEAD = 5.0  # seconds per run: compiling the step and the evaluation, data, checkpoints (a quick E5 job: ~4 s)
MLP_FACTOR = 1.1
MC_LENGTH = (0.9, 0.0125)  # length(L) = (L / 64) (a + b L / C): a + 8 b = 1 (C = 8, 105 s), a + 16 b = 1.1 (C = 4)
SHARED_SLOWDOWN = {1: 1.0, 2: 1.7}  # per-run slowdown with this many jobs at a time on the 2-core CPU
STEP_SECONDS = (REFERENCE["seconds"] - RUN_OVERHEAD) / REFERENCE["steps"]  # the reference's 105 s include it


@dataclass(frozen=True)
class RunCost:
    job: Job
    phase: str  # "sweep" | "final" | "after"
    seconds: float  # alone on the idle CPU


def _per_token_step(config) -> float:
    """Seconds of one training step per sequence for this model at the reference length (see :func:`_length`)."""
    model = config.model
    kinds = model.layer_kinds
    kind = sum(KIND_FACTOR[k] for k in kinds) / len(kinds)
    memory = MEMORY_FACTOR.get(model.mixer.memory, 1.0) if model.has_recurrent else 1.0
    size = model.num_layers * (model.d_model / 32) ** 0.5 * (MLP_FACTOR if model.mlp else 1.0)
    return STEP_SECONDS / REFERENCE["batch"] * kind * memory * size


def _length(config, seq_len: int) -> float:
    """Cost of a sequence of ``seq_len`` tokens against the reference's 64 (the mean over the layer kinds)."""
    ratio, size = seq_len / REFERENCE["seq_len"], config.model.mixer.segment_size
    law = {"mc": ratio * (MC_LENGTH[0] + MC_LENGTH[1] * seq_len / size), "none": ratio,
           "sliding_window": ratio, "attention": ratio}
    kinds = config.model.layer_kinds
    return sum(law[k] for k in kinds) / len(kinds)


def evaluation_seconds(job: Job, config) -> float:
    """Forward passes of the job's evaluation (a third of a training step per sequence and token)."""
    task, per_seq = config.train.task, _per_token_step(config) / 3
    options = job.options()
    if job.evaluate in ("niah", "posttrain"):
        lengths = [task.seq_len * f for f in options.get("length_factors", (1, 2, 4, 8))]
        cells = len(options.get("depths", (0.0, 0.25, 0.5, 0.75, 1.0))) * int(options.get("samples", 32))
        return per_seq * cells * sum(_length(config, n) for n in lengths)
    return per_seq * task.eval_examples * _length(config, task.seq_len)


def run_seconds(job: Job) -> float:
    """Estimated seconds of ``job`` alone on the idle CPU: training (none for ``posttrain``) plus evaluation."""
    from mc_jax.train import load_run_config

    config = load_run_config(job.preset, job.all_overrides())
    tc = config.train
    train = 0.0 if job.evaluate == "posttrain" else (
        tc.steps * tc.batch_size * _per_token_step(config) * _length(config, tc.task.seq_len))
    return RUN_OVERHEAD + train + evaluation_seconds(job, config)


def planned_runs(plan: Plan) -> list[RunCost]:
    """Every run an experiment makes: the sweep on the validation seed (several rates; not for models that take
    another group's rate, ``Job.lr_from``), the reported seeds, the post-training jobs (their learning rate is the
    source's, unknown before the sweep: the first rate stands in)."""
    runs = []
    runs += [RunCost(j, "sweep", run_seconds(j)) for m in plan.models if len(model_rates(m, plan.lrs)) > 1
             for lr in model_rates(m, plan.lrs) for j in [dataclasses.replace(m, seed=VALIDATION_SEED, lr=lr)]]
    lr = plan.lrs[0]
    runs += [RunCost(j, "final", run_seconds(j)) for m in plan.models for s in plan.seeds
             for j in [dataclasses.replace(m, seed=s, lr=lr)]]
    runs += [RunCost(j, "after", run_seconds(j)) for a in plan.after for s in plan.seeds
             for j in [dataclasses.replace(a, seed=s, lr=lr)]]
    return runs


def wall_seconds(runs: list[RunCost], jobs: int) -> float:
    """Phases one after another; within a phase, longest run first onto the least loaded of ``jobs`` workers."""
    slowdown = SHARED_SLOWDOWN.get(jobs, SHARED_SLOWDOWN[2] * jobs / 2)
    total = 0.0
    for phase in ("sweep", "final", "after"):
        costs = sorted((r.seconds * (slowdown if jobs > 1 else 1.0) for r in runs if r.phase == phase),
                       reverse=True)
        workers = [0.0] * max(1, jobs)
        for c in costs:
            heapq.heappush(workers, heapq.heappop(workers) + c)
        total += max(workers)
    return total


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def estimate(names: list[str], *, quick: bool = False, jobs: int = 2, verbose: bool = False,
             extended: bool = False) -> list[str]:
    """Lines of the plan (the budgeted core unless ``extended``): per experiment the runs per phase and the wall time
    alone and with ``jobs`` at a time."""
    lines, grand = [], {1: 0.0, jobs: 0.0}
    for name in names:
        plan = plan_of(name, quick, extended)
        runs = planned_runs(plan)
        phases = {p: sum(r.phase == p for r in runs) for p in ("sweep", "final", "after")}
        walls = {j: wall_seconds(runs, j) for j in grand}
        for j in grand:
            grand[j] += walls[j]
        lines.append(f"{name:4s} {TITLES[name]}: {len(runs)} runs ({phases['sweep']} lr sweep, {phases['final']} "
                     f"reported, {phases['after']} post-training); {_minutes(walls[1])} at 1 job, "
                     f"{_minutes(walls[jobs])} with --jobs {jobs}")
        if verbose:
            groups: dict[str, list[RunCost]] = {}
            for r in runs:
                groups.setdefault(r.job.group, []).append(r)
            for group, items in groups.items():
                lines.append(f"       {group}: {len(items)} runs x ~{items[0].seconds:.0f} s")
    lines.append(f"total: {_minutes(grand[1])} at 1 job, {_minutes(grand[jobs])} with --jobs {jobs} "
                 f"({'quick' if quick else 'extended' if extended else 'budgeted core of the'} suite; cost table "
                 "in mc_jax/experiments/budget.py, +-50%)")
    return lines


__all__ = ["KIND_FACTOR", "MEMORY_FACTOR", "REFERENCE", "RUN_OVERHEAD", "RunCost", "estimate", "planned_runs",
           "run_seconds", "wall_seconds"]
