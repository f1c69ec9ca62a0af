"""A notebook-style tour: build a model, train it a few steps, save it, load it back, generate text.

Run it as a script (``python examples/notebook.py [out_dir]``) or cell by cell (``# %%`` marks the cells). The
tests execute it (tests/test_examples.py). Every name comes from one import line.
"""

# %% Imports: the whole notebook API in one line
import sys
import tempfile

import jax
import jax.numpy as jnp
import optax

from mc_jax import (
    ByteTokenizer,
    MixerConfig,
    ModelConfig,
    PureModel,
    create_model,
    generate,
    load_checkpoint,
    mean_loss,
)

out_dir = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="mc_jax_notebook_")

# %% Build: a 2-layer byte-level MC model (linear memory, gated-residual caching over segments of 16 tokens)
config = ModelConfig(vocab_size=256, d_model=64, num_layers=2, num_heads=2,
                     mixer=MixerConfig(kind="mc", memory="linear", aggregation="grm", segment_size=16))
model = create_model(config, seed=0)
pure, state = PureModel.split(model)                       # pure functions of a parameter pytree
print("parameters:", pure.num_params(state))

# %% Data: bytes of a short text, next-byte targets
tok = ByteTokenizer()
text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 8
ids = jnp.asarray(tok.encode(text))
seq = 64
windows = jnp.stack([ids[i:i + seq + 1] for i in range(0, len(ids) - seq - 1, seq)])
inputs, labels = windows[:, :-1], windows[:, 1:]           # [B, 64] each

# %% Train a few steps: optax AdamW on the pure apply function
params = state  # the whole nnx state is a pytree; optimise it all (a tiny model, no frozen parts)
tx = optax.adamw(3e-3)
opt_state = tx.init(params)


@jax.jit
def train_step(params, opt_state):
    loss, grads = jax.value_and_grad(lambda p: mean_loss(pure.apply(p, inputs), labels))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


for step in range(1, 31):
    params, opt_state, loss = train_step(params, opt_state)
    if step in (1, 10, 30):
        print(f"step {step}: loss {float(loss):.3f}")

# %% Save: the same checkpoint format train.py writes (orbax), with the config
from mc_jax.train import Checkpointer, RunConfig, split_model  # noqa: E402

trained = pure.merge(params)                               # back to a flax.nnx module
_, param_dict, _ = split_model(trained)
ckpt = Checkpointer(f"{out_dir}/run")
ckpt.save(30, param_dict, tx.init(param_dict), data_state=None, config=RunConfig(model=config))
ckpt.close()

# %% Load it back: the model is rebuilt from the config stored in the checkpoint
run = load_checkpoint(f"{out_dir}/run")
logits_saved = pure.apply(params, inputs[:1])
logits_loaded = run.pure.apply(run.state, inputs[:1])
print("loaded step", run.step, "| same logits:", bool(jnp.allclose(logits_saved, logits_loaded)))

# %% Generate: greedy continuation of a prompt, decoded token by token from the per-layer caches
prompt = tok.encode("To be, or not")
out = generate(run.pure, run.state, prompt[None], max_new_tokens=24)
print("generated:", repr(tok.decode(out[0, len(prompt):])))
