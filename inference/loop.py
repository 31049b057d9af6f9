"""The chunked driver of long loops: :func:`chunked_loop` runs ``state, out = step(key_i, state)``
in compiled chunks (:func:`run_chunk`), with a progress bar and, through
:mod:`inference.checkpoint`, checkpoints and bit-identical resume. ``mcmc.run``, ``vi.fit``, the
particle filter and tempered SMC run on it. Both names are re-exported by
:mod:`inference.checkpoint`.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> x, xs = chunked_loop(jax.random.key(0), lambda k, x: (x + 1, x), jnp.int32(0), 5, chunk_size=2,
    ...                      progress=False)
    >>> int(x), xs.tolist()
    (5, [0, 1, 2, 3, 4])
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from .checkpoint import (  # noqa: F401
    _strong,
    _describe,
    _describe_outs,
    _describe_key,
    _diff,
    _jsonify,
    _mismatch,
    _check_state,
    _steps,
    _write_history,
    _read_history,
    save,
    _read_meta,
    _restore_state,
    _damaged,
    _none_intact,
    _prune,
    CheckpointError,
    CheckpointMismatchError,
    _FRESH_HINT,
    _NO_DATA,
)

__all__ = ["chunked_loop", "run_chunk"]


@jax.jit
def _concat_chunks(chunks):
    """Join the chunks' output leaves along the step axis, all in one compiled program (eager
    ``jnp.concatenate`` would compile one small program per leaf shape)."""
    return [jnp.concatenate(xs) for xs in zip(*chunks)]


@functools.partial(jax.jit, static_argnames=("step", "size", "with_data"))
def run_chunk(step, size, with_data, key, start, state, data, n_valid=None):
    """One compiled chunk of :func:`chunked_loop`: ``size`` steps ``i = start .. start+size-1`` of
    ``state, out = step(fold_in(key, i), state[, data])`` as a ``lax.scan``; returns
    ``(state, outs)`` with the outputs stacked along a leading axis of length ``size``.

    ``n_valid`` (a traced integer, optional): only the first ``n_valid`` steps change the state;
    the later ones are computed and discarded (their outputs are garbage). :func:`chunked_loop`
    runs its last, shorter chunk this way, so a loop of any length uses one compiled program.

    ``step`` (hashable), ``size`` and ``with_data`` are static: the program is compiled once per
    step, size and argument shapes and shared by every caller (``vi.fit``, ``mcmc.run``); it is
    traceable, so a pure function (``mcmc.sample``) may call it under ``jit``/``vmap``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> def count(key, x):
        ...     return x + 1, x
        >>> x, xs = run_chunk(count, 3, False, jax.random.key(0), 0, jnp.int32(5), None)
        >>> int(x), xs.tolist()
        (8, [5, 6, 7])
    """

    def body(s, i):
        k = jax.random.fold_in(key, i)
        new, out = step(k, s, data) if with_data else step(k, s)
        if n_valid is not None:
            keep = i < start + n_valid
            new = jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), new, s)
        return new, out

    return jax.lax.scan(body, state, start + jnp.arange(size))


def _resume(directory, state, out_desc_fn, settings, n_steps):
    """``(done, state, output chunks)`` from the latest intact compatible checkpoint, or None."""
    steps = _steps(directory)
    if not steps:
        return None
    given_state, skipped = _describe(state), []
    for s in reversed(steps):
        try:
            meta = _read_meta(directory, s)
        except Exception as err:  # noqa: BLE001
            _damaged(directory, s, err, skipped)
            continue
        if s > n_steps:
            raise CheckpointMismatchError(
                f"cannot resume from the checkpoint at step {s} under {directory!r}: n_steps: saved run reached "
                f"step {s} (its n_steps was {meta.get('n_steps')}) vs given n_steps={n_steps}. A run can be "
                f"continued to more steps, not fewer: pass n_steps >= {s}, or use a new checkpoint directory.")
        d = _diff(meta["settings"], settings)
        if d:
            raise _mismatch(directory, s, " ".join(map(str, d[0])), d[1], d[2], _FRESH_HINT)
        _check_state(directory, s, meta["state"], given_state, "state")
        out_desc = out_desc_fn()
        d = _diff(meta["outs"], out_desc)
        if d:
            raise _mismatch(directory, s, "per-step output " + " ".join(map(str, d[0])), d[1], d[2], _FRESH_HINT)
        try:
            restored = _restore_state(directory, s, meta, state)
            chunks = _read_history(directory, meta["history"], out_desc)
            if (meta["history"][-1][1] if meta["history"] else 0) != s:
                raise CheckpointError(f"the history ends before step {s}")
        except Exception as err:  # noqa: BLE001
            _damaged(directory, s, err, skipped)
            continue
        return s, restored, chunks, meta["history"]
    raise _none_intact(directory, skipped)


def chunked_loop(
    key,
    step: Callable[..., tuple[Any, Any]],
    state,
    n_steps: int,
    chunk_size: int = 1000,
    directory: str | None = None,
    progress: bool = True,
    desc: str = "steps",
    *,
    data=_NO_DATA,
    keep: int = 3,
    settings: dict | None = None,
    validate: Callable[[int, int, Any, Any], None] | None = None,
    postfix: Callable[[Any], dict] | None = None,
    device_outputs: bool = False,
    masked: bool = False,
    discard_outputs: bool = False,
):
    """Run ``state, out = step(fold_in(key, i), state)`` for ``i < n_steps`` in jitted chunks.

    Returns the final state and the per-step outputs stacked along a leading axis (NumPy arrays).
    The chunk program is compiled once per ``step`` (hashed: pass the same function, or a hashable
    object with ``__eq__``/``__hash__``), chunk size and argument shapes; ``key`` and ``data`` are
    traced. With ``data``, the step is called as ``step(key, state, data)`` (data such as
    observations or hyperparameters: new values do not recompile). ``validate(start, size, state,
    outs)`` may raise to reject a chunk before it is accepted (and saved); ``postfix(outs)`` returns
    the progress bar's postfix. ``masked=True`` runs every chunk through the masked program (as the
    last chunk of a loop of several), so loops of different lengths with the same ``chunk_size``
    share one compiled program; ``discard_outputs=True`` returns ``None`` for the outputs and keeps
    none in memory (a loop run for its final state). The outputs are NumPy arrays, or with ``device_outputs=True`` JAX
    arrays left where the computation put them (on the accelerator, sharded as the step made them;
    chunks restored from a checkpoint are copied back), for callers that keep computing on them.

    With ``directory``, the state is checkpointed after each chunk (only the last ``keep`` are kept;
    outputs are stored once per chunk) and a later call resumes from the latest intact checkpoint,
    bit-identically. Resuming checks the key, the state's and outputs' paths/shapes/dtypes and the
    JSON-able ``settings`` (any difference raises :class:`CheckpointMismatchError`); ``n_steps`` may
    exceed the saved run's (the run continues) but not fall below its checkpoint; ``chunk_size``
    may change.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> def walk(key, x, scale):
        ...     x = x + scale * jax.random.normal(key)
        ...     return x, x
        >>> x, xs = chunked_loop(jax.random.key(0), walk, jnp.zeros(()), 8, chunk_size=3, progress=False,
        ...                      data=jnp.float32(0.5))
        >>> xs.shape, bool(x == xs[-1])
        ((8,), True)
    """
    n_steps = int(n_steps)
    chunk_size = max(1, min(int(chunk_size), max(n_steps, 1)))
    # equal chunks (the last one masked when n_steps is not a multiple): one compiled program per
    # loop, and fewer than one step per chunk computed in vain
    chunk_size = -(-n_steps // -(-n_steps // chunk_size)) if n_steps > 0 else chunk_size
    with_data = data is not _NO_DATA
    data = data if with_data else None
    # scan carries strongly typed values; starting from them too means one program for every chunk
    state = jax.tree_util.tree_map(_strong, state)
    if directory is not None:  # (describing the key reads it back from the device: only when saving)
        settings = {"key": _describe_key(key), **_jsonify(settings or {})}

    @functools.cache
    def outputs():  # per-step output shapes (traced once: after the resume checks of state and settings)
        shapes = run_chunk.eval_shape(step, 1, with_data, key, 0, state, data)[1]
        return shapes, _describe_outs(jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype),
                                                             shapes))

    done, chunks, history = 0, [], []
    if directory is not None:
        directory = os.path.abspath(directory)
        resumed = _resume(directory, state, lambda: outputs()[1], settings, n_steps)
        if resumed is not None:
            done, state, chunks, history = resumed
    # the outputs' structure: traced abstractly only when needed (checkpoints, an empty loop, a
    # callback on the first chunk's outputs), else read off the first chunk (no second trace per call)
    out_treedef = None
    if directory is not None or n_steps <= done or validate is not None or postfix is not None:
        out_treedef = jax.tree_util.tree_structure(outputs()[0])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_steps, initial=done, desc=desc, leave=False)
    n_chunks = -(-n_steps // chunk_size)
    try:
        while done < n_steps:
            size = min(chunk_size, n_steps - done)
            new_state, out = run_chunk(step, chunk_size, with_data, key, done, state, data,
                                       n_valid=np.int32(size) if n_chunks > 1 or masked else None)
            out, treedef = jax.tree_util.tree_flatten(out)
            out_treedef = treedef if out_treedef is None else out_treedef
            if size < chunk_size:
                out = [x[:size] for x in out]
            if not device_outputs:
                out = [np.asarray(x) for x in out]
            if validate is not None:
                validate(done, size, new_state, jax.tree_util.tree_unflatten(out_treedef, out))
            state = new_state
            if not discard_outputs:
                chunks.append(out)
            if directory is not None:
                entry, host = _write_history(directory, done, done + size, out)
                history = history + [entry]
                if jax.process_count() > 1 and not discard_outputs:  # outputs spanning processes: the gathered copy
                    chunks[-1] = host
                save(directory, done + size, state, settings=settings, history=history, outs=outputs()[1],
                     n_steps=n_steps)
                _prune(directory, keep, done + size)
            done += size
            if bar is not None:
                bar.update(size)
                if postfix is not None:
                    bar.set_postfix(**postfix(jax.tree_util.tree_unflatten(out_treedef, out)))
    finally:
        if bar is not None:
            bar.close()
    xp = jnp if device_outputs else np
    if discard_outputs:
        return state, None
    if len(chunks) == 1 and device_outputs:
        outs = chunks[0]
    elif chunks and device_outputs:
        outs = _concat_chunks(chunks)
    elif chunks:
        outs = [np.concatenate(xs) for xs in zip(*chunks)]
    else:
        outs = [xp.zeros((0, *s.shape[1:]), s.dtype) for s in jax.tree_util.tree_leaves(outputs()[0])]
    return state, jax.tree_util.tree_unflatten(out_treedef, outs)
