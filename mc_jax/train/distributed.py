"""Multi-host start-up: ``jax.distributed.initialize`` from command-line flags or the environment.

One process runs per host (per GPU node, per TPU VM worker). Each must call ``jax.distributed.initialize`` before
touching a device; then ``jax.devices()`` lists the devices of all hosts and one ``jit`` program spans them.

Where the settings come from (the first that applies):

1. explicit arguments / ``train.py --coordinator HOST:PORT --num-processes N --process-id I``;
2. the environment: ``MC_COORDINATOR``, ``MC_NUM_PROCESSES``, ``MC_PROCESS_ID`` (and optionally
   ``MC_LOCAL_DEVICE_IDS=0,1``) -- e.g. set per host by a launcher script;
3. ``train.py --distributed`` or ``MC_DISTRIBUTED=1``: JAX's own auto-detection (SLURM, Open MPI / mpirun, TPU pod
   slices, Kubernetes / GKE, ...; see ``jax.distributed.initialize``);
4. none of these: a single process, nothing to do.

On CPU the cross-process collectives use gloo (``jax_cpu_collectives_implementation``, JAX's default).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import jax

ENV_COORDINATOR = "MC_COORDINATOR"
ENV_NUM_PROCESSES = "MC_NUM_PROCESSES"
ENV_PROCESS_ID = "MC_PROCESS_ID"
ENV_LOCAL_DEVICES = "MC_LOCAL_DEVICE_IDS"
ENV_AUTO = "MC_DISTRIBUTED"


@dataclass(frozen=True)
class DistributedSettings:
    """What :func:`initialize_from_env` resolved: ``mode`` is ``"explicit"``, ``"auto"`` or ``"single"``."""

    mode: str
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None


def _int(name: str, value: str | int | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer; got {value!r}") from None


def resolve_settings(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
                     *, auto: bool = False, env: Mapping[str, str] | None = None) -> DistributedSettings:
    """The settings from arguments, then ``env`` (default ``os.environ``); see the module docstring. Pure."""
    env = os.environ if env is None else env
    coordinator = coordinator or env.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _int(ENV_NUM_PROCESSES,
                                                                        env.get(ENV_NUM_PROCESSES))
    process_id = process_id if process_id is not None else _int(ENV_PROCESS_ID, env.get(ENV_PROCESS_ID))
    local = env.get(ENV_LOCAL_DEVICES)
    local_ids = tuple(_int(ENV_LOCAL_DEVICES, x) for x in local.split(",")) if local else None
    if coordinator:
        missing = [n for n, v in (("num_processes (MC_NUM_PROCESSES)", num_processes),
                                  ("process_id (MC_PROCESS_ID)", process_id)) if v is None]
        if missing:
            raise ValueError(f"a coordinator address ({coordinator}) needs {' and '.join(missing)} as well")
        if ":" not in coordinator:
            raise ValueError(f"the coordinator address must be HOST:PORT; got {coordinator!r}")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"process_id={process_id} must be in [0, num_processes={num_processes})")
        return DistributedSettings("explicit", coordinator, num_processes, process_id, local_ids)
    if num_processes is not None or process_id is not None:
        raise ValueError("num_processes / process_id given without a coordinator address (--coordinator or "
                         f"{ENV_COORDINATOR}=HOST:PORT)")
    if auto or env.get(ENV_AUTO, "").lower() in ("1", "true", "yes", "on"):
        return DistributedSettings("auto")
    return DistributedSettings("single")


def initialize_from_env(coordinator: str | None = None, num_processes: int | None = None,
                        process_id: int | None = None, *, auto: bool = False,
                        env: Mapping[str, str] | None = None) -> DistributedSettings:
    """Start JAX's distributed runtime as configured (a no-op for a single process). Call before any device use."""
    settings = resolve_settings(coordinator, num_processes, process_id, auto=auto, env=env)
    if settings.mode == "explicit":
        jax.distributed.initialize(coordinator_address=settings.coordinator, num_processes=settings.num_processes,
                                   process_id=settings.process_id, local_device_ids=settings.local_device_ids)
    elif settings.mode == "auto":
        jax.distributed.initialize()
    return settings


__all__ = ["DistributedSettings", "initialize_from_env", "resolve_settings"]
