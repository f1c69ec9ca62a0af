"""The shipped presets: one ``<name>.py`` per preset, each defining ``CONFIG`` (a ``RunConfig`` or a ``ModelConfig``).

They are package data, read with :mod:`importlib.resources` by :func:`mc_jax.configs_util.load_preset`, so an
installed wheel has them too: ``mc-train --preset train_token_mqar``, ``mc-train --list-presets``.
"""
