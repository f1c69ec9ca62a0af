"""One process of the two-process test: ``python scaleout_worker.py RUN_DIR OUT_JSON [overrides...]``.

The distributed runtime comes from the environment (``MC_COORDINATOR``, ``MC_NUM_PROCESSES``, ``MC_PROCESS_ID``), as
on a cluster; the run is the ordinary training loop (each process loads its own rows through grain).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mc_jax.train.distributed import initialize_from_env

settings = initialize_from_env()  # before any device is touched

import jax  # noqa: E402

from mc_jax.train import train  # noqa: E402
from mc_jax.train.checkpoint import Checkpointer  # noqa: E402
from tests.helpers.parallel_helpers import loop_config  # noqa: E402


def main() -> None:
    run_dir, out = sys.argv[1], sys.argv[2]
    config = loop_config(*sys.argv[3:])
    result = train(config, run_dir, progress=False)
    reader = Checkpointer(run_dir, read_only=True)
    steps = reader.all_steps()
    reader.close()
    Path(out).write_text(json.dumps({
        "mode": settings.mode, "process_index": jax.process_index(), "process_count": jax.process_count(),
        "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
        "losses": {str(k): v for k, v in result.losses.items()}, "final_eval": result.final_eval,
        "checkpoints": steps,
    }))


if __name__ == "__main__":
    main()
