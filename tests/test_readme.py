"""Every command and code block of README.md runs as written, in document order, in one scratch directory.

* ```` ```python ```` blocks are executed as they stand (each defines its own inputs).
* ```` ```bash ```` blocks: each command (``&&`` chains split, ``\\`` continuations joined, comments dropped) runs
  in-process through the entry point it names, with exit status 0. The only change is this **shortening**, appended
  to the command's own arguments (argparse / the last override wins):

  - ``train.py`` / ``mc-train``: ``train.steps=5 train.warmup=1 train.eval_every=0 train.ckpt_every=0
    train.task.eval_examples=32 train.batch_size=8``, and ``train.baseline=`` (no baseline runs) for every command
    but the main job, bare ``python train.py``, whose baseline runs are checked below (a baseline trains through
    the same code path as the main run; the suite's time is better spent elsewhere);
  - ``eval.py`` / ``mc-eval``: ``--examples 16 --niah-samples 2 --niah-lengths 256 --max-tokens 2000
    --max-new-tokens 8 --no-progress``;
  - ``mc-prepare --corpus shakespeare``: ``--corpus tiny`` (the shipped corpus: the suite uses no network).

  ``VAR=value`` prefixes are environment settings: ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` is what the
  suite's conftest already sets (8 simulated CPU devices), which the test checks; such commands run in a
  fresh process with that environment, as a shell runs them. Not run: ``pip install`` (CI does
  it), ``python -m pytest`` (this suite) and ``tensorboard`` (a viewer); any other unknown command fails the test.
* ```` ```sh ```` blocks (multi-host clusters, not runnable here): every ``python train.py`` command in them resolves
  to a valid config (``--print-config``), with the multi-host flags and environment dropped.

The README's outputs come from the full-length commands (minutes to hours); here the printed table's header and the
files the main command writes (checkpoints, metrics, TensorBoard event files, curves) are checked.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import jax
import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
pytestmark = pytest.mark.slow

TRAIN_SHORT = ["train.steps=5", "train.warmup=1", "train.eval_every=0", "train.ckpt_every=0",
               "train.task.eval_examples=32", "train.batch_size=8"]
EVAL_SHORT = ["--examples", "16", "--niah-samples", "2", "--niah-lengths", "256", "--max-tokens", "2000",
              "--max-new-tokens", "8", "--no-progress"]
NOT_RUN = ("pip", "tensorboard")


def train_short(args: list[str]) -> list[str]:
    """The shortening of one ``train.py`` command's arguments (the module docstring)."""
    return args + TRAIN_SHORT + (["train.baseline="] if args else [])


def blocks(text: str) -> list[tuple[str, str]]:
    """``[(language, body)]`` of the fenced code blocks, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.DOTALL | re.MULTILINE)]


def commands(body: str) -> list[list[str]]:
    """Shell commands of a block: continuations joined, comments dropped, ``&&`` chains split."""
    out = []
    for line in body.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        while tokens:
            cut = tokens.index("&&") if "&&" in tokens else len(tokens)
            out.append(tokens[:cut])
            tokens = tokens[cut + 1:]
    return [c for c in out if c]


def _split_env(cmd: list[str]) -> tuple[dict[str, str], list[str]]:
    env = {}
    while cmd and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", cmd[0]):
        key, value = cmd[0].split("=", 1)
        env[key] = value
        cmd = cmd[1:]
    return env, cmd


def _run_in_a_fresh_process(env: dict[str, str], cmd: list[str]) -> str:
    """A ``VAR=value python train.py ...`` command (the multi-device mesh runs) in its own process with that
    environment, as a shell runs it. In-process, late in a full suite run, XLA aborted while compiling the sharded
    initialisation (twice, in 2026-12-01's CI runs; never alone), which takes the whole pytest worker down."""
    full = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / cmd[1]), *train_short(cmd[2:])], env=full,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"README command {shlex.join(cmd)!r} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout


def run_command(cmd: list[str]) -> str | None:
    """Run one README command in-process (shortened); returns its stdout, or ``None`` when it is not run here."""
    from mc_jax.data.prepare import main as prepare_main
    from mc_jax.eval.cli import main as eval_main
    from mc_jax.train.cli import main as train_main
    from tools.device_memory import main as memory_main

    env, cmd = _split_env(cmd)
    for key, value in env.items():
        assert key == "XLA_FLAGS", f"unexpected environment setting {key}={value} in the README"
        n = int(re.fullmatch(r"--xla_force_host_platform_device_count=(\d+)", value).group(1))
        assert jax.device_count() == n, f"the suite simulates {jax.device_count()} devices, the README {n}"
    if cmd[0] in NOT_RUN or cmd[:3] == ["python", "-m", "pytest"]:
        return None
    if env and cmd[:2] == ["python", "train.py"]:
        return _run_in_a_fresh_process(env, cmd)
    if cmd[0] == "python" and cmd[1] == "-m":
        name, args = cmd[2], cmd[3:]
    elif cmd[0] == "python":
        name, args = cmd[1], cmd[2:]
    else:
        name, args = cmd[0], cmd[1:]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        if name in ("train.py", "mc-train"):
            code = train_main(train_short(args))
        elif name in ("eval.py", "mc-eval"):
            code = eval_main(args + EVAL_SHORT)
        elif name in ("mc_jax.data.prepare", "mc-prepare"):
            args = ["tiny" if a == "shakespeare" else a for a in args]
            code = prepare_main(args)
        elif name == "tools.device_memory":
            code = memory_main(args)
        elif name.startswith("examples/") and name.endswith(".py"):
            old = sys.argv
            sys.argv = [name, *args]
            try:
                runpy.run_path(str(REPO / name), run_name="__main__")
            finally:
                sys.argv = old
            code = 0
        else:
            raise AssertionError(f"README command {shlex.join(cmd)!r} is not known to tests/test_readme.py")
    out = buf.getvalue()
    assert code == 0, f"README command {shlex.join(cmd)!r} exited {code}:\n{out}"
    return out


def cluster_config(cmd: list[str]) -> list[str]:
    """The ``train.py`` arguments inside a cluster command, without the multi-host flags."""
    for i, tok in enumerate(cmd):
        if "python train.py" in tok:  # a command passed as one string (e.g. gcloud --command="...")
            return cluster_config(shlex.split(tok.split("&&")[-1]))
        if tok == "train.py":
            args, rest, skip = [], cmd[i + 1:], False
            for a in rest:
                if skip:
                    skip = False
                elif a in ("--coordinator", "--num-processes", "--process-id"):
                    skip = True
                elif a != "--distributed":
                    args.append(a)
            return args
    return []


def test_readme_runs_as_written(tmp_path, monkeypatch, capsys):
    from mc_jax.train.cli import main as train_main

    monkeypatch.chdir(tmp_path)
    text = README.read_text()
    ran, executed, resolved = [], 0, 0
    for lang, body in blocks(text):
        if lang == "python":
            exec(compile(body, "README.md", "exec"), {"__name__": "__readme__"})  # noqa: S102 (the point)
            executed += 1
        elif lang == "bash":
            for cmd in commands(body):
                out = run_command(cmd)
                if out is not None:
                    ran.append((cmd, out))
        elif lang == "sh":
            for cmd in commands(body):
                args = cluster_config(_split_env(cmd)[1])
                if args:
                    assert train_main([*args, "--print-config"]) == 0, cmd
                    resolved += 1
    capsys.readouterr()
    assert executed >= 3 and resolved >= 4 and len(ran) >= 12
    # the main command's files: checkpoints, metrics, TensorBoard events, curves; one directory per baseline
    root = tmp_path / "runs" / "tiny_mqar"
    for name in ("main", "baseline", "attention"):
        run = root / name
        assert (run / "final.json").exists() and (run / "curves.png").exists() and (run / "run.json").exists()
        assert list((run / "tb").glob("events.out.tfevents.*")), f"no TensorBoard events in {run}"
    assert (root / "comparison.json").exists() and (root / "curves.png").exists()
    # printed outputs have the README's layout
    main_out = next(out for cmd, out in ran if cmd == ["python", "train.py"])
    readme_table = next(body for lang, body in blocks(text) if lang == "" and body.startswith("[main 1/3]"))
    header = next(line for line in readme_table.splitlines() if line.startswith("run "))
    assert header in main_out.splitlines()
    for line in ("memory caching:", "softmax attention (the ceiling):"):
        assert line in readme_table and line in main_out
