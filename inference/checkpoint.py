"""Checkpointing and resumable, chunked loops for long runs (SMC, MCMC, VI).

State is any pytree (traces, particle collections, MCMC states, optax states, PRNG keys).
:func:`chunked_loop` runs ``n_steps`` of a step function as jitted ``lax.scan`` chunks (a progress
bar advances between chunks), derives the key of step ``i`` as ``fold_in(key, i)``, and, given a
directory, saves after every chunk and resumes from the latest intact checkpoint: a resumed run is
bit-identical to an uninterrupted one. ``vi.fit`` is built on it.

Layout of a checkpoint directory::

    step_0000000020/state/      the state pytree, written with orbax (typed PRNG keys as key data)
    step_0000000020/meta.json   format, step, n_steps, the state's leaf paths/shapes/dtypes and
                                SHA-256 checksums, the per-step output shapes/dtypes, the run's
                                settings (key, caller-given settings such as vi.fit's optimizer
                                fingerprint) and the list of history chunks up to this step
    history/outs_0000000010_0000000020.npz   the per-step outputs of steps 10..19 (written once)

Each step directory is written under a temporary name and renamed when complete. Only the last
``keep`` checkpoints are kept; the outputs are stored once, chunk by chunk (storage grows linearly
with the number of steps). On resume the latest checkpoint is compared with the given run (key,
state structure/shapes/dtypes, output shapes, settings; ``n_steps`` may grow but not fall below the
saved step) and a difference raises :class:`CheckpointMismatchError` naming the setting, saved vs
given. A damaged checkpoint (unreadable or truncated files, a checksum mismatch) is skipped with a
:class:`CheckpointWarning` naming its step, falling back to the previous intact one; if none is
intact, :class:`CheckpointError` says so.

Several processes (``jax.distributed``): every process calls with the same directory, on a file
system they all see. State and outputs spread over several processes' devices are gathered (a
collective), process 0 writes the files, and on resume each process reads them and places its
own shards (the restored state has the sharding of the state it is resumed into).

Examples:
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

import hashlib
import io
import json
import os
import shutil
import uuid
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ppl.errors import ModelError

__all__ = ["save", "restore", "latest_step", "chunked_loop", "run_chunk", "fingerprint", "CheckpointError",
           "CheckpointMismatchError", "CheckpointWarning"]

_FORMAT = 1
_NO_DATA = object()


class CheckpointError(ModelError):
    """No intact checkpoint could be read (damaged files), or a checkpoint cannot serve this run."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """Resuming with a setting (key, state shapes/dtypes, optimizer, ...) that differs from the saved run."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an earlier one."""


# ------------------------------------------------------------------------------ descriptions
def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _key_impl_name(k) -> str:
    return str(jax.random.key_impl(k))


def _to_storable(state):
    """NumPy leaves (typed keys as key data). Leaves spread over several processes' devices are
    gathered: a collective, every process calls it (see :func:`inference.sharding.to_host`)."""
    from inference.sharding import to_host

    return to_host(state)


def _from_storable(stored, like):
    """``stored`` (NumPy leaves) as arrays like ``like``'s; a leaf of ``like`` that spans several
    processes gets the same sharding (each process places its own shards from the full value)."""

    def back(s, l):
        dtype = np.asarray(s).dtype if _is_key(l) else jnp.result_type(l)
        if isinstance(l, jax.Array) and not l.is_fully_addressable:
            s = np.asarray(s, dtype=dtype)
            v = jax.make_array_from_callback(s.shape, l.sharding, lambda idx: s[idx])
        else:
            v = jnp.asarray(s, dtype=dtype)
        return jax.random.wrap_key_data(v, impl=jax.random.key_impl(l)) if _is_key(l) else v

    return jax.tree_util.tree_map(back, stored, like)


def _writer() -> bool:
    """Whether this process writes checkpoint files: process 0 (under ``jax.distributed`` every
    process computes the same gathered values and reads the files; one writes them)."""
    return jax.process_index() == 0


def _checkpointer():
    """An orbax PyTree checkpointer for this process alone (no barriers with the other processes
    of a ``jax.distributed`` run: process 0 writes, each process reads by itself)."""
    import orbax.checkpoint as ocp

    if jax.process_count() == 1:
        return ocp.PyTreeCheckpointer()
    me = jax.process_index()
    opts = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=opts), multiprocessing_options=opts)


def _strong(x):
    if _is_key(x) or (isinstance(x, jax.Array) and not x.weak_type):
        return x
    x = jnp.asarray(x)
    return jax.lax.convert_element_type(x, x.dtype) if x.weak_type else x


def _describe_leaf(x) -> list:
    if _is_key(x):
        return [list(x.shape), f"key<{_key_impl_name(x)}>"]
    return [list(np.shape(x)), str(jnp.result_type(x))]


def _describe(tree) -> dict:
    """Leaf paths with their shapes and dtypes (JSON-able)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(p): _describe_leaf(x) for p, x in flat}


def _describe_outs(out_shapes) -> dict:
    flat, _ = jax.tree_util.tree_flatten_with_path(out_shapes)
    return {jax.tree_util.keystr(p): [list(s.shape), str(s.dtype)] for p, s in flat}


def _describe_key(key) -> str:
    if _is_key(key):
        return f"{_key_impl_name(key)} key {np.asarray(jax.random.key_data(key)).ravel().tolist()}"
    return f"raw key {np.asarray(key).ravel().tolist()}"


def _checksum(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _short(v, n: int = 160) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def _diff(saved, given, path: tuple = ()):
    """The first difference between two JSON-like values as ``(path, saved, given)``, or None."""
    if isinstance(saved, dict) and isinstance(given, dict):
        for k in saved:
            if k not in given:
                return (path + (k,), saved[k], "<absent>")
            d = _diff(saved[k], given[k], path + (k,))
            if d:
                return d
        for k in given:
            if k not in saved:
                return (path + (k,), "<absent>", given[k])
        return None
    return None if _jsonify(saved) == _jsonify(given) else (path, saved, given)


def _jsonify(v):
    return json.loads(json.dumps(v))


def _mismatch(directory, step, what, saved, given, hint):
    return CheckpointMismatchError(
        f"cannot resume from the checkpoint at step {step} under {directory!r}: {what}: saved {_short(saved)} "
        f"vs given {_short(given)}. {hint}")


_FRESH_HINT = "Pass the run's original settings to resume it, or use a new (or empty) checkpoint directory."


def _check_state(directory, step, saved: dict, given: dict, label: str):
    missing = [p for p in saved if p not in given]
    extra = [p for p in given if p not in saved]
    if missing or extra:
        raise _mismatch(directory, step, f"{label} tree structure", missing or "no other leaves",
                        extra or "no other leaves",
                        "(saved: leaves only in the checkpoint; given: leaves only in this run.) " + _FRESH_HINT)
    for p in sorted(saved, key=lambda p: (len(p), p)):  # the shallowest differing leaf first
        (shape, dtype), (gshape, gdtype) = saved[p], given[p]
        if list(shape) != list(gshape):
            raise _mismatch(directory, step, f"shape of {label}{p}", tuple(shape), tuple(gshape), _FRESH_HINT)
        if dtype != gdtype:
            raise _mismatch(directory, step, f"dtype of {label}{p}", dtype, gdtype, _FRESH_HINT)


def fingerprint(tree) -> str:
    """SHA-256 of a pytree's array leaves: their paths, dtypes, shapes and bytes (typed PRNG keys as
    key data). Static, non-array parts (Python objects in the tree's structure) are not included,
    so the value is the same in every process. Checkpointed algorithms record it among their
    settings to refuse resuming with other data.

    Examples:
        >>> import jax.numpy as jnp
        >>> fingerprint({"y": jnp.ones(3)}) == fingerprint({"y": jnp.ones(3)})
        True
        >>> fingerprint({"y": jnp.ones(3)}) == fingerprint({"y": jnp.zeros(3)})
        False
    """
    h = hashlib.sha256()
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    for path, x in flat:
        h.update(jax.tree_util.keystr(path).encode())
        h.update(_checksum(np.asarray(jax.random.key_data(x)) if _is_key(x) else np.asarray(x)).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------ files
def _step_name(step: int) -> str:
    return f"step_{step:010d}"


def _step_dir(directory: str, step: int) -> str:
    return os.path.join(os.path.abspath(directory), _step_name(step))


def _steps(directory: str) -> list[int]:
    if not os.path.isdir(directory):
        return []
    out = []
    for n in os.listdir(directory):
        if n.startswith("step_") and "tmp" not in n:
            try:
                out.append(int(n[len("step_"):]))
            except ValueError:
                continue
    return sorted(out)


def _remove(path: str):
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


def _write_history(directory: str, start: int, end: int, outs) -> tuple[list, list]:
    """Write the outputs of steps ``start..end-1`` (process 0 writes; outputs spread over several
    processes are gathered by all); returns the history entry ``[start, end, file, sha256]`` and
    the outputs' leaves as NumPy arrays."""
    hdir = os.path.join(os.path.abspath(directory), "history")
    os.makedirs(hdir, exist_ok=True)
    name = f"outs_{start:010d}_{end:010d}.npz"
    buf = io.BytesIO()
    leaves = jax.tree_util.tree_leaves(_to_storable(outs))
    np.savez(buf, **{f"leaf_{i:06d}": x for i, x in enumerate(leaves)})
    data = buf.getvalue()
    entry = [start, end, name, hashlib.sha256(data).hexdigest()]
    if not _writer():
        return entry, leaves
    tmp = os.path.join(hdir, f".{name}.tmp-{uuid.uuid4().hex}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, os.path.join(hdir, name))
    return entry, leaves


def _read_history(directory: str, entries: list, out_desc: dict) -> list:
    """The output leaves of every history entry, checked against the checksums and ``out_desc``."""
    hdir = os.path.join(os.path.abspath(directory), "history")
    chunks, expect = [], 0
    for start, end, name, sha in entries:
        if start != expect:
            raise CheckpointError(f"history chunks are not contiguous at step {expect}")
        with open(os.path.join(hdir, name), "rb") as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != sha:
            raise CheckpointError(f"history file {name} fails its checksum")
        with np.load(io.BytesIO(data)) as z:
            leaves = [z[f"leaf_{i:06d}"] for i in range(len(out_desc))]
        for leaf, (shape, dtype) in zip(leaves, out_desc.values()):
            if leaf.shape != (end - start, *shape) or str(leaf.dtype) != dtype:
                raise CheckpointError(f"history file {name} holds {leaf.shape} {leaf.dtype}")
        chunks.append(leaves)
        expect = end
    return chunks


def save(directory: str, step: int, state, *, settings: dict | None = None, history: list | None = None,
         outs: dict | None = None, n_steps: int | None = None) -> str:
    """Save pytree ``state`` as checkpoint ``step`` under ``directory``; returns its path.

    The state goes through orbax; a ``meta.json`` next to it records the leaves' paths, shapes,
    dtypes and checksums plus the JSON-able ``settings`` (compared when resuming). ``history`` and
    ``outs`` are used by :func:`chunked_loop` (the list of output chunks up to ``step`` and their
    shapes). The step directory appears atomically (written under a temporary name, then renamed).

    Examples:
        >>> import tempfile, jax.numpy as jnp
        >>> d = tempfile.mkdtemp()
        >>> _ = save(d, 3, {"x": jnp.arange(3.0)})
        >>> latest_step(d)
        3
    """
    directory = os.path.abspath(directory)
    final = _step_dir(directory, step)
    leaves = jax.tree_util.tree_leaves(_to_storable(state))  # a collective under jax.distributed
    if not _writer():
        return final
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{_step_name(step)}.tmp-{uuid.uuid4().hex}")
    os.makedirs(tmp)
    with _checkpointer() as ckpt:
        ckpt.save(os.path.join(tmp, "state"), {f"leaf_{i:06d}": leaf for i, leaf in enumerate(leaves)})
    meta = {
        "format": _FORMAT,
        "step": int(step),
        "n_steps": None if n_steps is None else int(n_steps),
        "state": _describe(state),
        "checksums": [_checksum(x) for x in leaves],
        "stored_dtypes": [str(x.dtype) for x in leaves],
        "outs": outs or {},
        "settings": _jsonify(settings or {}),
        "history": history or [],
    }
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f)
    _remove(final)
    os.rename(tmp, final)
    return final


def latest_step(directory: str) -> int | None:
    """The largest saved step under ``directory`` (None if there is none); it may still be damaged.

    Examples:
        >>> import tempfile
        >>> latest_step(tempfile.mkdtemp()) is None
        True
    """
    steps = _steps(directory)
    return steps[-1] if steps else None


def _read_meta(directory: str, step: int) -> dict:
    with open(os.path.join(_step_dir(directory, step), "meta.json")) as f:
        meta = json.load(f)
    if meta.get("format") != _FORMAT or meta.get("step") != step:
        raise CheckpointError(f"meta.json is not a format-{_FORMAT} record of step {step}")
    return meta


def _restore_state(directory: str, step: int, meta: dict, like):
    """The verified state of checkpoint ``step`` in the structure of ``like`` (raises on damage)."""
    with _checkpointer() as ckpt:
        raw = ckpt.restore(os.path.join(_step_dir(directory, step), "state"))
    like_leaves, treedef = jax.tree_util.tree_flatten(like)
    if len(like_leaves) != len(meta["checksums"]):
        raise CheckpointError(f"meta.json lists {len(meta['checksums'])} leaves, the state has {len(like_leaves)}")
    stored = []
    for i, (sha, dtype) in enumerate(zip(meta["checksums"], meta["stored_dtypes"])):
        leaf = np.asarray(raw[f"leaf_{i:06d}"], dtype=dtype)
        if _checksum(leaf) != sha:
            raise CheckpointError(f"leaf {i} of the state fails its checksum")
        stored.append(leaf)
    return _from_storable(jax.tree_util.tree_unflatten(treedef, stored), like)


def _damaged(directory, step, err, skipped):
    skipped.append(f"step {step} ({type(err).__name__}: {err})")
    warnings.warn(f"skipping the damaged checkpoint at step {step} under {directory!r} "
                  f"({type(err).__name__}: {_short(str(err), 200)}); trying an earlier one", CheckpointWarning,
                  stacklevel=3)


def _none_intact(directory, skipped):
    return CheckpointError(f"no intact checkpoint under {directory!r}: " + "; ".join(skipped)
                           + ". Delete the directory (or pass another) to start afresh.")


def restore(directory: str, like, step: int | None = None):
    """Restore checkpoint ``step`` (default: the latest intact one) into the structure of pytree ``like``.

    The saved state's paths, shapes and dtypes must match ``like`` (else
    :class:`CheckpointMismatchError`); its checksums are verified. Without ``step`` a damaged latest
    checkpoint is skipped with a :class:`CheckpointWarning`; :class:`CheckpointError` if none is intact.

    Examples:
        >>> import tempfile, jax, jax.numpy as jnp
        >>> d = tempfile.mkdtemp()
        >>> state = {"key": jax.random.key(1), "x": jnp.ones(2)}
        >>> _ = save(d, 0, state)
        >>> r = restore(d, state)
        >>> bool((jax.random.key_data(r["key"]) == jax.random.key_data(state["key"])).all())
        True
    """
    steps = _steps(directory) if step is None else [step]
    if not steps:
        raise CheckpointError(f"no checkpoint under {directory!r}")
    skipped = []
    for s in reversed(steps):
        try:
            meta = _read_meta(directory, s)
        except Exception as err:  # noqa: BLE001 - any read failure means a damaged record
            if step is not None:
                raise CheckpointError(f"checkpoint {s} under {directory!r} is damaged: {err}") from err
            _damaged(directory, s, err, skipped)
            continue
        _check_state(directory, s, meta["state"], _describe(like), "state")
        try:
            return _restore_state(directory, s, meta, like)
        except Exception as err:  # noqa: BLE001
            if step is not None:
                raise CheckpointError(f"checkpoint {s} under {directory!r} is damaged: {err}") from err
            _damaged(directory, s, err, skipped)
    raise _none_intact(directory, skipped)


def _prune(directory: str, keep: int, current: int):
    """Keep the ``keep`` latest checkpoints up to ``current``; drop later ones (a superseded run),
    temporary leftovers and history files no kept checkpoint refers to (process 0 only)."""
    if not _writer():
        return
    steps = _steps(directory)
    kept = [s for s in steps if s <= current][-max(1, keep):]
    for s in steps:
        if s not in kept:
            _remove(_step_dir(directory, s))
    for n in os.listdir(directory):
        if n.startswith(".step_") and "tmp" in n:
            _remove(os.path.join(directory, n))
    hdir = os.path.join(directory, "history")
    if not os.path.isdir(hdir):
        return
    used = set()
    for s in kept:
        try:
            used.update(e[2] for e in _read_meta(directory, s)["history"])
        except Exception:  # noqa: BLE001 - an unreadable record protects nothing
            continue
    for n in os.listdir(hdir):
        if n not in used:
            _remove(os.path.join(hdir, n))


# the chunked driver lives in inference.loop (it uses the files and descriptions above)
from .loop import chunked_loop, run_chunk  # noqa: E402,F401  (re-exported)
