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

The same works on one host with several devices or across hosts after ``jax.distributed``
initialization (the mesh then spans every process's devices).

Example:
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

__all__ = ["device_mesh", "batch_sharding", "constrain_batch", "shard_batch", "active_mesh", "lanes"]

AXIS = "batch"


class _State(threading.local):
    def __init__(self):
        self.mesh = None


_STATE = _State()


def device_mesh(devices=None, axis_name: str = AXIS) -> Mesh:
    """A one-dimensional mesh over ``devices`` (default: every device of every process).

    Example:
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
    def one(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = jax.lax.with_sharding_constraint(jax.random.key_data(x), _spec(x, mesh))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.lax.with_sharding_constraint(x, _spec(x, mesh))

    return jax.tree_util.tree_map(one, tree)


def shard_batch(tree, mesh: Mesh):
    """Place a pytree's leaves on ``mesh`` with their leading axis sharded (outside ``jit``).

    Example:
        >>> import jax.numpy as jnp
        >>> x = shard_batch(jnp.arange(8.0), device_mesh())
        >>> len(x.sharding.device_set) == len(jax.devices())
        True
    """
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, _spec(x, mesh)), tree)


def lanes(key, n: int):
    """``ppl.keys.lanes(key, n)`` with the lane (particle/chain) axis sharded over the active mesh.

    Example:
        >>> import jax
        >>> lanes(jax.random.key(0), 4).lane.shape
        (4,)
    """
    from ppl.keys import LaneKey
    from ppl.keys import lanes as _lanes

    ks = _lanes(key, n)
    return LaneKey(ks.base, constrain_batch(ks.lane))
