"""Cheap batch axes for random keys: lane keys.

Vectorizing a model over ``n`` copies with ``jax.vmap`` over ``jax.random.split(key, n)`` makes
every copy derive its own key and draw its own few random bits, which costs several times more
threefry work than drawing all ``n`` values from one key, as hand-written JAX does
(``jax.random.normal(key, (n,))``). A :class:`LaneKey` is one *base* key shared by the batch plus
an integer *lane* that differs per copy. Key derivations on it (``fold_in`` by address, ``split``)
act on the shared base key once for the whole batch; a distribution sampled with a lane key under
``jax.vmap`` (lane batched, base key not) draws the whole batch at once from the base key, through
a ``jax.custom_batching.custom_vmap`` rule. Outside ``vmap`` a lane key draws from
``fold_in(base, lane)``. Each copy gets independent values; the same key gives the same bits.

Examples:
    >>> import jax, ppl
    >>> @ppl.gen
    ... def model():
    ...     return ppl.normal(0.0, 1.0) @ "x"
    >>> ks = lanes(jax.random.key(0), 1000)
    >>> xs = jax.vmap(lambda k: model.simulate(k).choices["x"], in_axes=(LANE_AXES,))(ks)
    >>> xs.shape, bool(abs(xs.mean()) < 0.1)
    ((1000,), True)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpyro.distributions as nd
from jax.custom_batching import custom_vmap
from numpyro.distributions.batch_util import promote_batch_shape

__all__ = ["LaneKey", "KeyTable", "Noise", "lanes", "LANE_AXES", "fold_in", "split", "is_key", "draw", "vmap_lanes",
           "raw"]


@jax.tree_util.register_pytree_node_class
class LaneKey:
    """A key shared by a batch (``base``) plus a per-copy integer ``lane``."""

    __slots__ = ("base", "lane")

    def __init__(self, base, lane):
        self.base = base
        self.lane = lane

    def tree_flatten(self):
        return (self.base, self.lane), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.base, obj.lane = children
        return obj

    @property
    def shape(self):
        return jnp.shape(self.lane)

    def __getitem__(self, i):
        return LaneKey(self.base[i], self.lane[i])

    def __len__(self):
        return self.shape[0]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self):
        return f"LaneKey(lanes={jnp.shape(self.lane)})"


@jax.tree_util.register_pytree_node_class
class KeyTable:
    """A key (``raw``) with some of its site keys precomputed: ``table[addr]`` is bit-identical to
    ``fold_in(raw, hash(addr))``. ``ppl.scan`` computes the site keys of every step at once, outside
    the loop, instead of one key derivation per site inside the loop body."""

    __slots__ = ("raw", "table")

    def __init__(self, raw, table):
        self.raw = raw
        self.table = table

    def tree_flatten(self):
        names = tuple(self.table)
        return (self.raw, tuple(self.table[n] for n in names)), names

    @classmethod
    def tree_unflatten(cls, names, children):
        obj = object.__new__(cls)
        obj.raw = children[0]
        obj.table = dict(zip(names, children[1]))
        return obj

    def __repr__(self):
        return f"KeyTable({sorted(self.table)})"


@jax.tree_util.register_pytree_node_class
class Noise:
    """A site's key together with the standard normal draw ``jax.random.normal(key, shape)`` made
    for it ahead of time, in one vectorized call with the other sites of its ``@gen`` execution.

    A normal site sampled with it computes ``loc + noise * scale`` (numpyro's own formula), the
    same value it would draw from ``key``; every other use sees ``key`` (:func:`raw`). Drawing all
    sites' noise at once is one random-number program instead of one per site, which is what makes
    models with hundreds of scalar sites compile in seconds.

    Examples:
        >>> import jax, numpyro.distributions as nd
        >>> k = jax.random.key(0)
        >>> n = Noise(k, jax.random.normal(k, ()))
        >>> bool(draw(nd.Normal(1.0, 2.0), n) == nd.Normal(1.0, 2.0).sample(k))
        True
    """

    __slots__ = ("key", "z")

    def __init__(self, key, z):
        self.key = key
        self.z = z

    def tree_flatten(self):
        return (self.key, self.z), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.key, obj.z = children
        return obj

    def __repr__(self):
        return f"Noise(shape={jnp.shape(self.z)})"


def raw(key):
    """The underlying key of a :class:`KeyTable` or :class:`Noise` (other keys are returned unchanged)."""
    if isinstance(key, KeyTable):
        return key.raw
    return key.key if isinstance(key, Noise) else key


def _noise_applies(d, z) -> bool:
    return type(d) is nd.Normal and tuple(jnp.shape(z)) == tuple(d.batch_shape) + tuple(d.event_shape)


#: ``in_axes`` entry for a batch of lane keys made by :func:`lanes`: base shared, lane mapped.
LANE_AXES = LaneKey(None, 0)


def lanes(key, n: int) -> LaneKey:
    """``n`` lane keys sharing ``key``; map over them with ``in_axes=LANE_AXES``.

    Examples:
        >>> import jax
        >>> lanes(jax.random.key(0), 4).lane.tolist()
        [0, 1, 2, 3]
    """
    return LaneKey(key, jnp.arange(n, dtype=jnp.uint32))


def vmap_lanes(fn, key, n: int, *args, in_axes=0):
    """``jax.vmap(fn)`` over ``n`` lane keys of ``key`` and ``args`` (mapped along ``in_axes``).

    Examples:
        >>> import jax, ppl
        >>> tr = vmap_lanes(ppl.normal.simulate, jax.random.key(0), 5, 0.0, 1.0, in_axes=None)
        >>> tr.value.shape
        (5,)
    """
    axes = (in_axes,) * len(args) if not isinstance(in_axes, tuple) else in_axes
    return jax.vmap(fn, in_axes=(LANE_AXES, *axes))(lanes(key, n), *args)


def is_key(key) -> bool:
    """Whether ``key`` is a JAX PRNG key (typed or raw uint32) or a :class:`LaneKey`."""
    key = raw(key)
    if isinstance(key, LaneKey):
        return True
    return isinstance(key, (jax.Array, jax.core.Tracer)) and (
        jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or (key.dtype == jnp.uint32 and key.shape[-1:] == (2,))
    )


def fold_in(key, data: int):
    """``jax.random.fold_in`` that keeps lane keys' base shared."""
    key = raw(key)
    if isinstance(key, LaneKey):
        return LaneKey(jax.random.fold_in(key.base, data), key.lane)
    return jax.random.fold_in(key, data)


def split(key, num: int = 2):
    """``jax.random.split`` that keeps lane keys' base shared (each piece keeps the lane)."""
    key = raw(key)
    if isinstance(key, LaneKey):
        lane = jnp.broadcast_to(key.lane, (num,) + jnp.shape(key.lane))
        return LaneKey(jax.random.split(key.base, num), lane)
    return jax.random.split(key, num)


def _sample(d, key, sample_shape=()):
    """``d.sample(key, sample_shape)``, bit for bit; a normal of more than one dimension draws its
    noise as one flat vector and reshapes it (threefry numbers its outputs in row-major order, so
    the bits are the same). XLA computes a flat draw several times faster than a multi-dimensional
    one, above all under ``vmap`` (a batch of keys drawing ``(K, L)`` each is a 3-d draw)."""
    if type(d) is nd.Normal:
        shape = tuple(sample_shape) + tuple(d.batch_shape) + tuple(d.event_shape)
        if len(shape) > 1:
            eps = jax.random.normal(key, (math.prod(shape),)).reshape(shape)
            return d.loc + eps * d.scale
    return d.sample(key, sample_shape)


def _raw_draw(base, lane, leaves, treedef):
    return _sample(treedef.unflatten(leaves), jax.random.fold_in(base, lane))


def draw(d, key):
    """Sample numpyro distribution ``d`` with a plain key, a lane key or a :class:`Noise` key."""
    if isinstance(key, Noise):
        if _noise_applies(d, key.z):
            return d.loc + key.z * d.scale
        key = key.key
    key = raw(key)
    if not isinstance(key, LaneKey):
        return _sample(d, key)
    leaves, treedef = jax.tree_util.tree_flatten(d)

    @custom_vmap
    def f(base, lane, leaves):
        return _raw_draw(base, lane, leaves, treedef)

    @f.def_vmap
    def rule(axis_size, in_batched, base, lane, leaves):
        base_b, lane_b, leaves_b = in_batched
        if base_b or not lane_b:
            axes = (0 if base_b else None, 0 if lane_b else None, [0 if b else None for b in leaves_b])
            out = jax.vmap(lambda k, l, xs: _raw_draw(k, l, xs, treedef), in_axes=axes, axis_size=axis_size)(
                base, lane, leaves
            )
            return out, True
        if not any(leaves_b):  # shared parameters: draw the whole batch at once
            return _sample(treedef.unflatten(leaves), base, (axis_size,)), True
        axes = [0 if b else None for b in leaves_b]

        def per_lane():  # one draw per lane from fold_in(base, lane): right for every family
            return jax.vmap(lambda xs, ln: _raw_draw(base, ln, xs, treedef), in_axes=(axes, 0))(leaves, lane)

        want = jax.eval_shape(per_lane).shape
        try:
            batched = jax.vmap(lambda xs: treedef.unflatten(xs), in_axes=(axes,), axis_size=axis_size)(leaves)
            out = _sample(promote_batch_shape(batched), base)
        except (ValueError, TypeError):
            out = None
        if out is None or out.shape != want:  # e.g. expanded families: promote_batch_shape misplaces the axis
            return per_lane(), True
        return out, True

    return f(key.base, key.lane, list(leaves))
