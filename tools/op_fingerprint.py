"""Fingerprint of ``mc_jax.ops.memory_caching``: outputs and gradients of a fixed set of calls, for bit-identity checks.

Every memory x aggregation x segmentation x init at an awkward shape (T = 37, Dk != Dv where the memory allows it),
in float32 and float64, in the parallel form (``impl="xla"``, and ``impl="pallas"`` for the linear memories) and the
streaming form (three calls passing the cache: 20 tokens, 16 tokens, one decoding step). Each entry holds the output
and the gradient of a fixed random projection of the output with respect to every input (q, k, v, u, gates, params).
Inputs come from numpy's seeded generator, so they do not depend on the code under test.

    python tools/op_fingerprint.py save /tmp/fingerprint.npz [--quick]     # at one commit
    python tools/op_fingerprint.py compare /tmp/fingerprint.npz [--quick]  # at another: bit-for-bit (np.array_equal)
    python tools/op_fingerprint.py diff A.npz B.npz                        # two saved fingerprints

The float64 half runs in a subprocess with ``JAX_ENABLE_X64=1``. The full set is ~360 compilations (about 20 CPU
minutes); ``--quick`` is a covering subset (every memory, aggregation, segmentation and init appears; both families
in every form; the kernels' dense and sparse paths), 19 compilations.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere: the checkout's mc_jax

MEMORIES = ("linear", "gated_linear", "delta", "dla", "titans")
AGGREGATIONS = ("residual", "grm", "soup", "ssc")
SEGMENTATIONS = ("constant", "log")
INITS = ("independent", "checkpoint")
DEEP = ("dla", "titans")
B, T, H, DK, DV, EXPANSION = 2, 37, 2, 4, 6, 2
GATES = {
    "linear": (), "gated_linear": ("log_decay",), "delta": ("beta", "log_decay"),
    "dla": ("theta", "alpha"), "titans": ("theta", "eta", "alpha"),
}


def make_inputs(memory: str, dtype) -> dict:
    rng = np.random.default_rng(MEMORIES.index(memory))
    dv = DK if memory in DEEP else DV
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))
    bth = (B, T, H)
    out = dict(q=unit(rng.standard_normal(bth + (DK,))), k=unit(rng.standard_normal(bth + (DK,))),
               v=rng.standard_normal(bth + (dv,)), u=rng.standard_normal(bth + (DK,)))
    natural = {
        "log_decay": lambda: -np.log1p(np.exp(rng.standard_normal(bth))) * 0.5,
        "beta": lambda: sig(rng.standard_normal(bth)),
        "theta": lambda: 0.1 * sig(rng.standard_normal(bth)),
        "alpha": lambda: 0.1 * sig(rng.standard_normal(bth)),
        "eta": lambda: sig(rng.standard_normal(bth) + 1.0),
    }
    out["gates"] = {name: natural[name]() for name in GATES[memory]}
    if memory in DEEP:
        f = EXPANSION * DK
        out["params"] = {"W1": 0.3 * rng.standard_normal((H, DK, f)) / f**0.5,
                         "W2": rng.standard_normal((H, f, DK)) / DK**0.5}
    else:
        out["params"] = 0.3 * rng.standard_normal((B, H, DK, dv))
    out["probe"] = rng.standard_normal((B, T, H, dv))
    cast = lambda x: np.asarray(x, dtype)
    return {name: (x if name == "probe" else _tree_map(cast, x)) for name, x in out.items()}


def _tree_map(fn, tree):
    if isinstance(tree, dict):
        return {k: _tree_map(fn, v) for k, v in tree.items()}
    return fn(tree)


def _flat(prefix: str, tree, out: dict) -> None:
    import jax

    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)


def configs():
    for memory, aggregation, segmentation, init in itertools.product(MEMORIES, AGGREGATIONS, SEGMENTATIONS, INITS):
        size = 8 if segmentation == "constant" else 4
        yield memory, dict(memory=memory, aggregation=aggregation, segmentation=segmentation, init=init,
                           segment_size=size, top_k=2 if aggregation == "ssc" else None)


def pallas_configs():
    """Linear memories through the kernels (interpret mode): dense read, and the sparse top-k read (segment 2)."""
    for memory, aggregation, segmentation, init in itertools.product(
            ("linear", "gated_linear", "delta"), ("residual", "grm", "ssc"), SEGMENTATIONS, INITS):
        size = 8 if segmentation == "constant" else 4
        yield memory, dict(memory=memory, aggregation=aggregation, segmentation=segmentation, init=init,
                           segment_size=size, top_k=2 if aggregation == "ssc" else None)
    for memory in ("linear", "delta"):
        yield memory, dict(memory=memory, aggregation="ssc", segmentation="constant", init="independent",
                           segment_size=2, top_k=2)


def _kw(memory, aggregation, segmentation, init, size=None):
    size = size or (8 if segmentation == "constant" else 4)
    return memory, dict(memory=memory, aggregation=aggregation, segmentation=segmentation, init=init,
                        segment_size=size, top_k=2 if aggregation == "ssc" else None)


QUICK = {
    "parallel32": [_kw("delta", "grm", "constant", "independent"), _kw("delta", "ssc", "log", "checkpoint"),
                   _kw("gated_linear", "residual", "log", "independent"),
                   _kw("gated_linear", "soup", "constant", "checkpoint"), _kw("titans", "soup", "log", "independent"),
                   _kw("titans", "grm", "constant", "checkpoint"), _kw("dla", "soup", "constant", "independent"),
                   _kw("dla", "ssc", "log", "checkpoint"), _kw("linear", "soup", "log", "checkpoint"),
                   _kw("linear", "grm", "constant", "independent")],
    "parallel64": [_kw("delta", "grm", "log", "independent"), _kw("titans", "soup", "constant", "checkpoint"),
                   _kw("gated_linear", "ssc", "log", "checkpoint")],
    "stream32": [_kw("delta", "grm", "log", "independent"), _kw("titans", "soup", "constant", "checkpoint"),
                 _kw("gated_linear", "ssc", "log", "checkpoint"), _kw("dla", "grm", "log", "independent")],
    "pallas32": [_kw("delta", "grm", "constant", "independent"), _kw("delta", "ssc", "constant", "independent", 2)],
}


def _name(kwargs: dict, form: str) -> str:
    return "/".join([form] + [f"{k}={v}" for k, v in kwargs.items()])


def run_parallel(memory: str, kwargs: dict, dtype, impl: str, out: dict) -> None:
    import jax
    import jax.numpy as jnp

    from mc_jax.ops import memory_caching

    x = make_inputs(memory, dtype)
    probe = jnp.asarray(x["probe"], dtype)

    @jax.jit
    def loss(q, k, v, u, gates, params):
        y = memory_caching(q, k, v, u=u, gates=gates, params=params, impl=impl, **kwargs)
        return jnp.sum(y * probe), y

    (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4, 5), has_aux=True)(
        x["q"], x["k"], x["v"], x["u"], x["gates"], x["params"])
    name = _name(kwargs, f"parallel-{impl}")
    out[name + "/y"] = np.asarray(y)
    _flat(name + "/grad", dict(zip(("q", "k", "v", "u", "gates", "params"), grads)), out)


def run_stream(memory: str, kwargs: dict, dtype, out: dict) -> None:
    import jax
    import jax.numpy as jnp

    from mc_jax.ops import init_cache, memory_caching

    x = make_inputs(memory, dtype)
    probe = jnp.asarray(x["probe"], dtype)
    cache_kwargs = {k: v for k, v in kwargs.items() if k not in ("aggregation", "top_k")}
    dv = x["v"].shape[-1]
    cuts = ((0, 20), (20, 36), (36, 37))

    @jax.jit
    def loss(q, k, v, u, gates, params):
        cache = init_cache(B, H, DK, dv, max_len=T, params=params, **cache_kwargs)
        ys = []
        for start, stop in cuts:
            cut = lambda a: a[:, start:stop]
            y, cache = memory_caching(cut(q), cut(k), cut(v), u=cut(u), gates=jax.tree.map(cut, gates),
                                      cache=cache, return_cache=True, impl="xla", **kwargs)
            ys.append(y)
        y = jnp.concatenate(ys, axis=1)
        return jnp.sum(y * probe), (y, cache)

    (_, (y, cache)), grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4, 5), has_aux=True)(
        x["q"], x["k"], x["v"], x["u"], x["gates"], x["params"])
    name = _name(kwargs, "stream")
    out[name + "/y"] = np.asarray(y)
    _flat(name + "/grad", dict(zip(("q", "k", "v", "u", "gates", "params"), grads)), out)
    leaves = {f: getattr(cache, f) for f in ("position", "online", "initial", "slots", "slot_keys", "slot_valid",
                                              "key_sums", "levels")}
    _flat(name + "/cache", leaves, out)


def collect(x64: bool, quick: bool = False) -> dict:
    import jax

    dtype = np.float64 if x64 else np.float32
    tag = "float64" if x64 else "float32"
    out: dict = {}
    assert jax.config.read("jax_enable_x64") == x64
    if quick:
        for memory, kwargs in QUICK["parallel64" if x64 else "parallel32"]:
            run_parallel(memory, kwargs, dtype, "xla", out)
        for memory, kwargs in () if x64 else QUICK["stream32"]:
            run_stream(memory, kwargs, dtype, out)
        for memory, kwargs in () if x64 else QUICK["pallas32"]:
            run_parallel(memory, kwargs, dtype, "pallas", out)
        return {f"{tag}/{k}": v for k, v in out.items()}
    for memory, kwargs in configs():
        run_parallel(memory, kwargs, dtype, "xla", out)
        run_stream(memory, kwargs, dtype, out)
    if not x64:
        for memory, kwargs in pallas_configs():
            run_parallel(memory, kwargs, dtype, "pallas", out)
    return {f"{tag}/{k}": v for k, v in out.items()}


def gather(quick: bool = False) -> dict:
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for x64 in (False, True):
            path = Path(tmp) / f"part{int(x64)}.npz"
            env = dict(os.environ, JAX_ENABLE_X64="1" if x64 else "0", JAX_PLATFORMS="cpu",
                       PYTHONPATH=str(ROOT))
            subprocess.run([sys.executable, __file__, "_part", str(path)] + (["--quick"] if quick else []), env=env,
                           check=True)
            with np.load(path) as part:
                result.update({k: part[k] for k in part.files})
    return result


def _load(path) -> dict:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    argv = [a for a in argv if a != "--quick"]
    if not (len(argv) == 2 and argv[0] in ("save", "compare", "_part") or len(argv) == 3 and argv[0] == "diff"):
        print(__doc__)
        return 2
    mode, path = argv[:2]
    if mode == "_part":
        import warnings

        import jax

        warnings.simplefilter("ignore")
        np.savez(path, **collect(jax.config.read("jax_enable_x64"), quick))
        return 0
    if mode == "diff":
        baseline, current = _load(path), _load(argv[2])
    else:
        current = gather(quick)
        if mode == "save":
            np.savez(path, **current)
            print(f"saved {len(current)} arrays to {path}")
            return 0
        baseline = _load(path)
    missing = sorted(set(baseline) ^ set(current))
    differ = sorted(k for k in set(baseline) & set(current) if not np.array_equal(baseline[k], current[k]))
    print(f"{len(baseline)} baseline arrays, {len(current)} current; {len(missing)} missing on one side, "
          f"{len(differ)} differ")
    for k in (missing + differ)[:40]:
        print("  ", k)
    return 0 if not missing and not differ else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
