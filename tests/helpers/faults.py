"""Fault injection helpers: run-directory hashes, bit flips, subprocess runs of train.py / eval.py, and private
mount namespaces (``unshare -m``) for read-only and full file systems."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRESET = str(REPO / "tests" / "train" / "tiny_run_preset.py")
ERROR_LOG = "mc_jax_errors.log"  # the one file a refusal may add (storage-library details)


def digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (except the error log), by relative path."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != ERROR_LOG}


def flip_bit(path: Path, offset: int | None = None, bit: int = 3) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 1 << bit
    path.write_bytes(bytes(data))


def invert_bytes(path: Path, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    start = max(0, len(data) // 2 - count // 2)
    for i in range(start, min(len(data), start + count)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def largest_data_file(step_dir: Path, item: str) -> Path:
    """The largest array-data file of ``item`` (``params`` / ``opt_state``) in a checkpoint step directory."""
    files = [p for p in (step_dir / item).rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def train_cmd(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), "--preset", PRESET, "--no-progress", *args]


def eval_cmd(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "eval.py"), *args]


def run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          check=False)


@cache
def can_unshare() -> str | None:
    """``None`` when private mount namespaces work here, else the reason (the tests that need them skip)."""
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt 2>&1 || mount -t tmpfs -o size=64k tmpfs /tmp"],
                           capture_output=True, text=True, check=False)
    return None if probe.returncode == 0 else f"unshare -m is not permitted: {probe.stderr.strip()[:200]}"


def in_namespace(setup: str, cmd: list[str], after: str = "", timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``cmd`` in a private mount namespace after the shell ``setup`` (mounts), then ``after`` (e.g. copy
    results out before the namespace and its mounts vanish). Returns the command's own exit status."""
    script = f"set -e; {setup}; set +e; {shlex.join(cmd)}; rc=$?; {after or 'true'}; exit $rc"
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], env=env(),
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          check=False)


def read_only_bind(path: Path) -> str:
    p = shlex.quote(str(path))
    return f"mount --bind {p} {p} && mount -o remount,bind,ro {p}"
