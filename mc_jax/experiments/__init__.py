"""The experiment suite of issue 16: the paper's comparisons at CPU size, one command per experiment.

    python -m mc_jax.experiments e1 [--quick] [--jobs 2]        # E1 stacked MQAR capacity (the primary result)
    python -m mc_jax.experiments all --quick                    # every experiment, tiny versions (smoke test)
    python -m mc_jax.experiments all --estimate [--verbose]     # planned runs and wall time; runs nothing

Experiments (:mod:`mc_jax.experiments.definitions`): ``e1`` stacked MQAR capacity, ``e2`` token MQAR with the full
block, ``e3`` needle in a haystack incl. post-training MC (without and with a brief fine-tune), ``e4``
character-level LM, ``e5`` the ablation, ``eb`` the block design (bare layer vs the default block vs candidate output
gates on stacked MQAR); ``all`` runs them in this order. ``--estimate`` (:mod:`mc_jax.experiments.budget`) prints
each experiment's runs and their wall time from a cost table calibrated on this CPU. Every job
is a call of :func:`mc_jax.train.train` (in-process, ``--jobs`` worker processes); its JSON (config, seed, accuracy,
wall time, git revision) lands in ``<out>/<exp>/jobs/``, and finished jobs are skipped on the next call. Tables and
plots go to ``docs/results/<exp>/`` and the summary with the paper's numbers to ``docs/results.md`` (``--quick``:
under ``<out>/results`` so a smoke run never overwrites measured results).
"""

from mc_jax.experiments.definitions import EXPERIMENTS, TITLES
from mc_jax.experiments.jobs import Job, run_job, run_jobs
from mc_jax.experiments.suite import main, run_experiment

__all__ = ["EXPERIMENTS", "TITLES", "Job", "main", "run_experiment", "run_job", "run_jobs"]
