"""Checkpointing and resumable, chunked loops for long runs (SMC, MCMC, VI).

State is any pytree (traces, particle collections, MCMC states, optax states, PRNG keys).
Checkpoints are written with orbax; typed PRNG keys are stored as their raw key data and
re-wrapped on restore. :func:`chunked_loop` runs ``n_steps`` of a step function as jitted
``lax.scan`` chunks (a progress bar advances between chunks), derives the key of step ``i`` as
``fold_in(key, i)``, and, given a directory, saves after every chunk and resumes from the latest
checkpoint: a resumed run is bit-identical to an uninterrupted one.

Example:
    >>> import jax, jax.numpy as jnp, tempfile
    >>> def step(key, x):
    ...     x = x + jax.random.normal(key)
    ...     return x, x
    >>> d = tempfile.mkdtemp()
    >>> full, ys = chunked_loop(jax.random.key(0), step, jnp.zeros(()), 10, chunk_size=4, progress=False)
    >>> part, _ = chunked_loop(jax.random.key(0), step, jnp.zeros(()), 6, chunk_size=4,
    ...                        directory=d, progress=False)
    >>> resumed, ys2 = chunked_loop(jax.random.key(0), step, jnp.zeros(()), 10, chunk_size=4,
    ...                             directory=d, progress=False)
    >>> bool(resumed == full), ys2.shape
    (True, (10,))
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["save", "restore", "latest_step", "chunked_loop"]


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_storable(state):
    return jax.tree_util.tree_map(lambda x: np.asarray(jax.random.key_data(x)) if _is_key(x) else np.asarray(x), state)


def _from_storable(stored, like):
    def back(s, l):
        if _is_key(l):
            return jax.random.wrap_key_data(jnp.asarray(s), impl=jax.random.key_impl(l))
        return jnp.asarray(s, dtype=jnp.result_type(l))

    return jax.tree_util.tree_map(back, stored, like)


def _step_dir(directory: str, step: int) -> str:
    return os.path.join(os.path.abspath(directory), f"step_{step:010d}")


def save(directory: str, step: int, state) -> str:
    """Save pytree ``state`` as checkpoint ``step`` under ``directory``; returns its path.

    Example:
        >>> import tempfile, jax.numpy as jnp
        >>> d = tempfile.mkdtemp()
        >>> _ = save(d, 3, {"x": jnp.arange(3.0)})
        >>> latest_step(d)
        3
    """
    import orbax.checkpoint as ocp

    path = _step_dir(directory, step)
    leaves, treedef = jax.tree_util.tree_flatten(_to_storable(state))
    with ocp.PyTreeCheckpointer() as ckpt:
        ckpt.save(path, {f"leaf_{i:06d}": leaf for i, leaf in enumerate(leaves)}, force=True)
    return path


def latest_step(directory: str) -> int | None:
    """The largest saved step under ``directory`` (None if there is none)."""
    if not os.path.isdir(directory):
        return None
    steps = [int(n.split("_")[1]) for n in os.listdir(directory) if n.startswith("step_") and "tmp" not in n]
    return max(steps) if steps else None


def restore(directory: str, like, step: int | None = None):
    """Restore the checkpoint ``step`` (default: latest) into the structure of pytree ``like``.

    Example:
        >>> import tempfile, jax, jax.numpy as jnp
        >>> d = tempfile.mkdtemp()
        >>> state = {"key": jax.random.key(1), "x": jnp.ones(2)}
        >>> _ = save(d, 0, state)
        >>> r = restore(d, state)
        >>> bool((jax.random.key_data(r["key"]) == jax.random.key_data(state["key"])).all())
        True
    """
    import orbax.checkpoint as ocp

    step = latest_step(directory) if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint under {directory!r}")
    with ocp.PyTreeCheckpointer() as ckpt:
        raw = ckpt.restore(_step_dir(directory, step))
    like_leaves, treedef = jax.tree_util.tree_flatten(like)
    stored = [raw[f"leaf_{i:06d}"] for i in range(len(like_leaves))]
    return _from_storable(jax.tree_util.tree_unflatten(treedef, stored), like)


def chunked_loop(
    key,
    step: Callable[[Any, Any], tuple[Any, Any]],
    state,
    n_steps: int,
    chunk_size: int = 1000,
    directory: str | None = None,
    progress: bool = True,
    desc: str = "steps",
):
    """Run ``state, out = step(fold_in(key, i), state)`` for ``i < n_steps`` in jitted chunks.

    Returns the final state and the per-step outputs stacked along a leading axis. With
    ``directory``, the state and outputs so far are checkpointed after each chunk and a later call
    with the same arguments resumes from the latest checkpoint, bit-identically.
    """
    chunk_size = max(1, min(chunk_size, n_steps))

    @functools.partial(jax.jit, static_argnums=2)
    def run_chunk(state, start, size):
        def body(s, i):
            return step(jax.random.fold_in(key, i), s)

        return jax.lax.scan(body, state, start + jnp.arange(size))

    done, outs = 0, []
    if directory is not None and latest_step(directory) is not None:
        done = latest_step(directory)
        out_like = jax.eval_shape(lambda s: run_chunk(s, 0, done)[1], state)
        like = {"state": state, "outs": jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), out_like)}
        saved = restore(directory, like, done)
        state, outs = saved["state"], [saved["outs"]]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_steps, initial=done, desc=desc, leave=False)
    while done < n_steps:
        size = min(chunk_size, n_steps - done)
        state, out = run_chunk(state, done, size)
        outs.append(out)
        done += size
        if bar is not None:
            bar.update(size)
        if directory is not None:
            outs = [_concat(outs)]
            save(directory, done, {"state": state, "outs": outs[0]})
    if bar is not None:
        bar.close()
    return state, _concat(outs)


def _concat(outs):
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *outs) if len(outs) > 1 else outs[0]
