"""What ``run.json`` records about the session that trained a run, beside its config: the git commit of the source
(``None`` for an installed wheel), package versions, devices, mesh, command line and start / end times (UTC).

    info = session_info(config)         # at the start of train()
    info = finish_session(info)         # adds "end_time" and "seconds"
"""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import jax

PACKAGES = ("mc_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "chex", "numpy")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def git_revision(path: str | Path | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout holding ``path`` (default: this package), or ``None``."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=False, timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict[str, Any]:
    devices = jax.devices()
    return {"backend": jax.default_backend(), "count": len(devices), "local_count": jax.local_device_count(),
            "kinds": sorted({d.device_kind for d in devices}), "processes": jax.process_count()}


def session_info(config: Any, *, start_step: int = 0) -> dict[str, Any]:
    """The session record of a run starting (or resuming) at ``start_step``."""
    mesh = config.mesh
    return {
        "start_time": _now(), "start_step": start_step, "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "git": git_revision(), "versions": package_versions(), "devices": device_info(),
        "mesh": {"data": mesh.data, "fsdp": mesh.fsdp, "tensor": mesh.tensor}, "host": platform.node(),
        "_t0": time.perf_counter(),
    }


def finish_session(info: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """``info`` with ``end_time``, wall ``seconds`` and ``extra`` (e.g. the final step) added."""
    out = {k: v for k, v in info.items() if k != "_t0"}
    out.update(end_time=_now(), seconds=round(time.perf_counter() - info.get("_t0", time.perf_counter()), 3), **extra)
    return out


def public(info: dict[str, Any]) -> dict[str, Any]:
    """``info`` without its private timer (what is written)."""
    return {k: v for k, v in info.items() if k != "_t0"}


__all__ = ["device_info", "finish_session", "git_revision", "package_versions", "public", "session_info"]
