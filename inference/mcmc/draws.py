"""What ``mcmc.run`` stores per draw: the choices the kernel moves (see :mod:`inference.mcmc.runner`).

:func:`stored_selection` decides, from the kernel's ``moves(trace)`` (or, for a kernel that
cannot say, every choice except the observations :func:`inference.mcmc.init_chains` recorded);
:class:`DrawMap` holds the draws and explains a lookup of an unstored address.

Examples:
    >>> import jax, ppl
    >>> from inference import mcmc
    >>> @ppl.gen
    ... def model():
    ...     x = ppl.normal(0.0, 1.0) @ "x"
    ...     ppl.normal(x, 1.0) @ "y"
    >>> tr, _ = model.generate(jax.random.key(0), ppl.ChoiceMap({"y": 0.5}))
    >>> stored_selection(mcmc.mh(ppl.select("x")), tr, False)
    select('x')
"""

from __future__ import annotations

import math
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from ppl.choicemap import ChoiceMap, Masked, Selection, normalize_addr, select
from ppl.errors import AddressError, fmt_addr
from ppl.lru import LRUCache

from .base import map_batched

__all__ = ["DrawMap", "stored_selection", "collect", "fixed_choices", "OBSERVED", "Packed", "pack", "unpack"]

#: init_chains traces -> the observed addresses (weak keys: dropped with the traces)
OBSERVED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _related(p, q):
    return p[: len(q)] == q or q[: len(p)] == p


def _moved(kernel, trace, paths):
    """The leaf paths (of ``paths``) that ``kernel`` may change, or ``None`` if it cannot say."""
    moves = kernel.moves(trace)
    if moves is None:
        return None
    if isinstance(moves, Selection):
        return {p for p in paths if moves.contains(p)}
    addrs = [normalize_addr(a) for a in moves]
    return {p for p in paths if any(_related(p, q) for q in addrs)}


#: (kernel, trace structure and leaf types, batched, observed) -> stored selection: deciding traces
#: the model abstractly, which for a model with many sites costs more than a short compiled run
_STORED: LRUCache = LRUCache(256)


def stored_selection(kernel, trace, batched, observed=()):
    """The selection of the choices stored per draw, or ``None`` for all of them (``trace`` is
    one trace or, ``batched``, a batch of them; ``observed``: addresses never to store when the
    kernel cannot say what it moves). Cached per kernel and trace structure."""
    leaves, treedef = jax.tree_util.tree_flatten(trace)
    key = (kernel, treedef, tuple((getattr(x, "shape", ()), getattr(x, "dtype", type(x))) for x in leaves), bool(batched),
           tuple(observed))
    try:
        hit = _STORED.get(key, _STORED)
    except TypeError:  # an unhashable kernel or model: decide every time
        return _stored_selection(kernel, trace, batched, observed)
    if hit is _STORED:
        hit = _STORED[key] = _stored_selection(kernel, trace, batched, observed)
    return hit


def _stored_selection(kernel, trace, batched, observed):
    single = jax.eval_shape(lambda t: map_batched(lambda x: x[0], t, t) if batched else t, trace)
    # the structure the compiled loop collects (branch choices as Masked leaves)
    leaves = jax.eval_shape(lambda t: t.choices, single).leaves()
    paths = [p for p, _ in leaves]
    if not paths or () in paths:
        return None
    moved = _moved(kernel, single, paths)
    if moved is None:
        keep = {p for p in paths if not any(_related(p, q) for q in observed)}
    else:
        keep = set(moved) | {p for p, v in leaves if isinstance(v, Masked)}
    if len(keep) == len(paths):
        return None
    return select(*sorted(keep))


def collect(choices, stored):
    """The stored part of ``choices`` (all of them when ``stored`` is ``None``)."""
    return choices if stored is None else choices.filter(stored)


@jax.tree_util.register_pytree_with_keys_class
class Packed:
    """A pytree's leaves as few arrays: the leaves of each dtype flattened and concatenated along
    the last axis, one block per dtype (leading axes, such as the draws' and chains', come before
    it). ``mcmc.run`` stores each draw's choices and the kernel's info this way inside its
    compiled loop (one output per dtype instead of one per site and info field: a smaller
    program) and :meth:`unpack` splits them on the host afterwards, without compiling anything.

    Examples:
        >>> import jax.numpy as jnp
        >>> p = pack({"a": jnp.zeros(2), "b": jnp.ones(()), "ok": jnp.array(True)})
        >>> [b.shape for b in p.blocks]
        [(3,), (1,)]
        >>> unpack(p)["b"].shape, unpack(p)["ok"].dtype.name
        ((), 'bool')
    """

    __slots__ = ("blocks", "treedef", "layout")

    def __init__(self, blocks, treedef, layout):
        # layout: per leaf (block index, offset, shape), in the tree's leaf order
        self.blocks, self.treedef, self.layout = tuple(blocks), treedef, layout

    def tree_flatten_with_keys(self):
        return ([(jax.tree_util.SequenceKey(i), b) for i, b in enumerate(self.blocks)],
                (self.treedef, self.layout))

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children, *aux)

    def unpack(self):
        """The pytree, each leaf with the blocks' leading axes: split on the host (NumPy) and put
        back on the default device."""
        blocks = [np.asarray(b) for b in self.blocks]
        leaves = []
        for i, off, shape in self.layout:
            b = blocks[i]
            piece = b[..., off:off + math.prod(shape)]
            leaves.append(jax.device_put(np.ascontiguousarray(piece).reshape(b.shape[:-1] + shape)))
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


def pack(tree):
    """``tree`` as a :class:`Packed` value (one array per dtype) when that makes fewer arrays than
    its leaves; else ``tree`` unchanged (traceable).

    Examples:
        >>> import jax.numpy as jnp
        >>> type(pack({"a": jnp.zeros(2), "b": jnp.ones(())})).__name__
        'Packed'
        >>> type(pack({"a": jnp.zeros(2), "n": jnp.ones((), jnp.int32)})).__name__
        'dict'
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    order: dict = {}  # dtype -> block index, in order of first appearance
    for x in leaves:
        order.setdefault(jnp.dtype(x.dtype), len(order))
    if len(order) >= len(leaves):
        return tree
    parts: list = [[] for _ in order]
    sizes = [0] * len(order)
    layout = []
    for x in leaves:
        i = order[jnp.dtype(x.dtype)]
        shape = tuple(jnp.shape(x))
        layout.append((i, sizes[i], shape))
        sizes[i] += math.prod(shape)
        parts[i].append(jnp.reshape(x, (-1,)))
    blocks = [ps[0] if len(ps) == 1 else jnp.concatenate(ps) for ps in parts]
    return Packed(blocks, treedef, tuple(layout))


def unpack(tree):
    """The pytree a :class:`Packed` holds (anything else unchanged).

    Examples:
        >>> import jax.numpy as jnp
        >>> unpack(pack([jnp.zeros(()), jnp.ones(())]))[1].tolist()
        1.0
    """
    return tree.unpack() if isinstance(tree, Packed) else tree


@jax.tree_util.register_pytree_with_keys_class
class DrawMap(ChoiceMap):
    """The draws of :class:`MCMCResult`: a :class:`ppl.ChoiceMap` whose leaves have leading axes
    ``(n_chains, n_samples)``, holding the choices the kernel moves. Indexing an address that
    is not stored because the kernel never moves it (an observation, or a choice outside the
    kernel's selection) raises an :class:`ppl.AddressError` that says so and points to
    ``res.fixed_choices``.

    Examples:
        >>> import jax, ppl
        >>> from inference import mcmc
        >>> @ppl.gen
        ... def model():
        ...     x = ppl.normal(0.0, 1.0) @ "x"
        ...     ppl.normal(x, 1.0) @ "y"
        >>> tr, _ = model.generate(jax.random.key(0), ppl.ChoiceMap({"y": 0.5}))
        >>> res = mcmc.run(jax.random.key(1), mcmc.mh(ppl.select("x")), tr, 10)
        >>> try:
        ...     res.choices["y"]
        ... except ppl.AddressError as e:
        ...     print(str(e).split(" (")[0])
        no draws at address 'y': the kernel never moves this choice
    """

    __slots__ = ("_fixed",)

    @staticmethod
    def wrap(chm: ChoiceMap, fixed=()) -> "DrawMap":
        """``chm`` as a :class:`DrawMap`; ``fixed`` are the paths of the unstored choices."""
        out = object.__new__(DrawMap)
        out._value, out._children, out._fixed = chm._value, chm._children, frozenset(fixed)
        return out

    def tree_flatten_with_keys(self):
        leaves, aux = ChoiceMap.tree_flatten(self)
        return [(jax.tree_util.SequenceKey(i), x) for i, x in enumerate(leaves)], (aux, self._fixed)

    def tree_flatten(self):
        leaves, aux = ChoiceMap.tree_flatten(self)
        return leaves, (aux, self._fixed)

    @classmethod
    def tree_unflatten(cls, aux, leaves):
        return DrawMap.wrap(ChoiceMap.tree_unflatten(aux[0], leaves), aux[1])

    def __getitem__(self, addr):
        try:
            return ChoiceMap.__getitem__(self, addr)
        except AddressError:
            path = () if addr == () else normalize_addr(addr)
            if any(_related(path, q) for q in self._fixed):
                raise AddressError(
                    f"no draws at address {fmt_addr(path)}: the kernel never moves this choice (an "
                    "observation, or a choice outside the kernel's selection), so mcmc.run does not "
                    f"store it per draw; its value is res.fixed_choices[{_external(path)!r}]"
                ) from None
            raise


def _external(path):
    return path[0] if len(path) == 1 else path


def fixed_choices(trace, stored):
    """The initial trace's choices that are not stored per draw (``None`` if all are)."""
    if stored is None:
        return ChoiceMap.empty()
    return trace.choices.filter(~stored)
