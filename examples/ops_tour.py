"""A short tour of the pure-functional ops (the README shows its output)."""

import jax
import jax.numpy as jnp

from mc_jax.ops import cached_ranges, init_cache, memory_caching

B, T, H, D = 2, 300, 4, 32
kq, kk, kv, ku, kg = jax.random.split(jax.random.key(0), 5)
unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
q, k = unit(jax.random.normal(kq, (B, T, H, D))), unit(jax.random.normal(kk, (B, T, H, D)))
v, u = jax.random.normal(kv, (B, T, H, D)), jax.random.normal(ku, (B, T, H, D))
gates = {"beta": jax.nn.sigmoid(jax.random.normal(kg, (B, T, H)))}

# Gated-residual Memory Caching over a delta-rule memory, segments of 64 tokens.
mc = dict(memory="delta", aggregation="grm", segment_size=64, gates=gates, u=u)
y = memory_caching(q, k, v, **mc)
print("y:", y.shape, y.dtype)

# The same numbers from the per-token definition (slow; float64 shown here for the check).
with jax.enable_x64(True):
    f64 = lambda x: jax.tree.map(lambda a: a.astype(jnp.float64), x)
    y_naive = memory_caching(*f64((q[:, :40], k[:, :40], v[:, :40])),
                             **{**mc, "segment_size": 8, "u": f64(u[:, :40]),
                                "gates": f64({"beta": gates["beta"][:, :40]})}, impl="naive")
    y_fast = memory_caching(*f64((q[:, :40], k[:, :40], v[:, :40])),
                            **{**mc, "segment_size": 8, "u": f64(u[:, :40]),
                               "gates": f64({"beta": gates["beta"][:, :40]})})
    print("max |naive - chunked| (float64):", float(jnp.abs(y_naive - y_fast).max()))

# Streaming: prefill 250 tokens, then decode token by token; equal to one call.
cache = init_cache(B, H, D, D, max_len=T, memory="delta", segment_size=64)
cut = lambda x, a, b: x[:, a:b]
part = lambda a, b: dict(u=cut(u, a, b), gates={"beta": cut(gates["beta"], a, b)})
y_pre, cache = memory_caching(cut(q, 0, 250), cut(k, 0, 250), cut(v, 0, 250), **{**mc, **part(0, 250)},
                              cache=cache, return_cache=True)
step = jax.jit(lambda qt, kt, vt, extra, c: memory_caching(qt, kt, vt, **{**mc, **extra}, cache=c, return_cache=True))
outs = [y_pre]
for t in range(250, T):
    y_t, cache = step(cut(q, t, t + 1), cut(k, t, t + 1), cut(v, t, t + 1), part(t, t + 1), cache)
    outs.append(y_t)
print("streamed == parallel:", bool(jnp.allclose(jnp.concatenate(outs, 1), y, atol=1e-5)),
      "| cached segments:", int(cache.slot_valid.sum()), "| position:", int(cache.position))

# Log (Fenwick) segmentation: which token ranges token 36 reads with blocks of one token.
print("log segments of token 36:", cached_ranges(36, "log", 1))

# Gradients flow to every input, including the gates and the router queries.
grads = jax.grad(lambda q, u, g: jnp.sum(memory_caching(q, k, v, **{**mc, "u": u, "gates": g}) ** 2),
                 argnums=(0, 1, 2))(q, u, gates)
print("grad norms (q, u, beta):", [round(float(jnp.linalg.norm(g)), 3) for g in jax.tree.leaves(grads)])
