"""Sharding particle, chain and minibatch axes across devices.

Inference algorithms mark the leading axis of the batches they create (particles in importance
sampling and SMC, chains in MCMC, data minibatches in VI) with :func:`constrain_batch`. Outside a
:func:`batch_sharding` block this does nothing; inside it, the axis is laid out across the
devices of a ``jax.sharding.Mesh`` and XLA partitions the compiled program. Random numbers use
JAX's partitionable threefry, so every per-particle/per-chain value is bit-identical to a
single-device run; reductions across the sharded axis (e.g. ``logsumexp`` of particle weights) can
differ in the last bits because the summation order differs.

Algorithms that are compiled once per configuration (``importance.sample``, the ``smc``
functions, ``mcmc.run``) include the active mesh in their compilation key.

The same works on one host with several devices or across processes/hosts after
``jax.distributed.initialize`` (the mesh then spans every process's devices; see docs/scaling.md).
Every process runs the same program (SPMD). Arrays sharded over such a mesh are *global*: each
process holds only its devices' shards, so ``np.asarray`` of a sharded result fails there;
:func:`to_host` gathers them (a collective: every process must call it). Inputs: a value every
process has in full goes on the mesh with :func:`shard_batch` or :func:`replicate`; a process's
own slice of a batch with ``shard_batch(local_slice, mesh, process_local=True)``.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> mesh = device_mesh()
    >>> with batch_sharding(mesh):
    ...     x = jax.jit(lambda k: constrain_batch(jax.random.normal(k, (8, 3))))(jax.random.key(0))
    >>> bool(jnp.all(x == jax.random.normal(jax.random.key(0), (8, 3))))
    True
"""

from __future__ import annotations

import contextlib
import threading

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["device_mesh", "batch_sharding", "constrain_batch", "constrain_replicated", "shard_batch", "replicate",
           "to_host", "active_mesh", "lanes"]

AXIS = "batch"


class _State(threading.local):
    def __init__(self):
        self.mesh = None


_STATE = _State()


def device_mesh(devices=None, axis_name: str = AXIS) -> Mesh:
    """A one-dimensional mesh over ``devices`` (default: every device of every process).

    Examples:
        >>> device_mesh().axis_names
        ('batch',)
    """
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (axis_name,))


@contextlib.contextmanager
def batch_sharding(mesh: Mesh):
    """Lay out batch axes created by inference algorithms across ``mesh`` while tracing.

    Functions compiled inside the block keep the layout they were compiled with.
    """
    old = _STATE.mesh
    _STATE.mesh = mesh
    try:
        yield mesh
    finally:
        _STATE.mesh = old


def active_mesh() -> Mesh | None:
    """The mesh of the enclosing :func:`batch_sharding` block, if any."""
    return _STATE.mesh


def _spec(x, mesh):
    name = mesh.axis_names[0]
    n = mesh.devices.size
    if getattr(x, "ndim", 0) == 0 or x.shape[0] % n != 0:
        return NamedSharding(mesh, PartitionSpec())
    return NamedSharding(mesh, PartitionSpec(name))


def constrain_batch(tree, mesh: Mesh | None = None):
    """Constrain every leaf's leading axis to be sharded over ``mesh`` (default: the active mesh;
    no-op without one). Leaves whose leading axis does not divide evenly are replicated.

    Typed PRNG keys are constrained through their raw key data.
    """
    mesh = _STATE.mesh if mesh is None else mesh
    if mesh is None:
        return tree
    return jax.tree_util.tree_map(
        lambda x: _on_keys(lambda a: jax.lax.with_sharding_constraint(a, _spec(x, mesh)), x), tree)


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _on_keys(fn, x):
    """``fn`` applied to ``x``, or to its key data for a typed PRNG key array (rewrapped)."""
    if _is_key(x):
        return jax.random.wrap_key_data(fn(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    return fn(x)


def constrain_replicated(tree, mesh: Mesh | None = None):
    """Inside ``jit``: constrain every leaf to be replicated on ``mesh`` (default: the active mesh;
    no-op without one), e.g. parameters updated from gradients reduced over a sharded batch.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> with batch_sharding(device_mesh()):
        ...     p = jax.jit(lambda x: constrain_replicated(x * 2.0))(jnp.ones(3))
        >>> p.sharding.is_fully_replicated
        True
    """
    mesh = _STATE.mesh if mesh is None else mesh
    if mesh is None:
        return tree
    rep = NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map(lambda x: _on_keys(lambda a: jax.lax.with_sharding_constraint(a, rep), x), tree)


def _put(x, sharding, process_local: bool):
    """``x`` placed with ``sharding`` (possibly spanning several processes)."""
    if process_local:
        # this process's slice of the leading axis: the global array has n_processes times the rows
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))
    if sharding.is_fully_addressable or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return jax.device_put(x, sharding)  # one process, or resharding an array that is already global
    # a global mesh: every process passes the full value, each keeps its own devices' shards
    # (``jax.device_put`` of an array committed to one local device onto such a mesh is an error)
    a = np.asarray(x)
    return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])


def shard_batch(tree, mesh: Mesh, *, process_local: bool = False):
    """Place a pytree's leaves on ``mesh`` with their leading axis sharded (outside ``jit``).

    Every process passes the full value (the same in every process), or, with
    ``process_local=True`` after ``jax.distributed.initialize``, its own consecutive slice of the
    leading axis (process ``p`` of ``P`` holds rows ``p*n/P .. (p+1)*n/P - 1`` of the global
    array, in ``jax.process_index()`` order of the mesh's devices). Leaves whose leading axis does
    not divide over the mesh are replicated (with ``process_local`` they must divide). Typed PRNG
    keys are placed through their key data.

    Examples:
        >>> import jax.numpy as jnp
        >>> x = shard_batch(jnp.arange(8.0), device_mesh())
        >>> len(x.sharding.device_set) == len(jax.devices())
        True
    """
    def one(x):
        if process_local:
            n_local = np.shape(x)[0] if np.ndim(x) else 0
            n = n_local * len({d.process_index for d in mesh.devices.flat})
            if not n or n % mesh.devices.size:
                raise ValueError(f"shard_batch(process_local=True): the local leading axis ({n_local} rows) times the "
                                 f"number of processes must divide over the mesh's {mesh.devices.size} devices")
            sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
        else:
            sharding = _spec(x, mesh)
        return _on_keys(lambda a: _put(a, sharding, process_local), x)

    return jax.tree_util.tree_map(one, tree)


def replicate(tree, mesh: Mesh):
    """Place a pytree's leaves on every device of ``mesh`` (every process passes the same value).

    Examples:
        >>> import jax.numpy as jnp
        >>> replicate({"w": jnp.ones(2)}, device_mesh())["w"].sharding.is_fully_replicated
        True
    """
    rep = NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map(lambda x: _on_keys(lambda a: _put(a, rep, False), x), tree)


def to_host(tree):
    """A pytree's leaves as NumPy arrays, gathering arrays that span other processes' devices.

    On one process this is ``np.asarray`` per leaf. After ``jax.distributed.initialize`` a leaf
    sharded over devices of several processes is gathered with
    ``jax.experimental.multihost_utils.process_allgather`` (a collective: every process must call
    :func:`to_host` on the same values). Typed PRNG keys come back as their key data.

    Examples:
        >>> import jax.numpy as jnp
        >>> to_host({"a": shard_batch(jnp.arange(4.0), device_mesh())})["a"].tolist()
        [0.0, 1.0, 2.0, 3.0]
    """
    def one(x):
        if _is_key(x):
            x = jax.random.key_data(x)
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree_util.tree_map(one, tree)


def lanes(key, n: int):
    """``ppl.keys.lanes(key, n)`` with the lane (particle/chain) axis sharded over the active mesh.

    Examples:
        >>> import jax
        >>> lanes(jax.random.key(0), 4).lane.shape
        (4,)
    """
    from ppl.keys import LaneKey
    from ppl.keys import lanes as _lanes

    ks = _lanes(key, n)
    return LaneKey(ks.base, constrain_batch(ks.lane))
