"""Model arguments and user inputs: which arguments are data and which are static, packing them
into pytrees, and coercing what users pass (choice maps, argument tuples, keys).

A model argument is *data* (traced; new values do not recompile) when it is an array, a numpy
value or a Python float; anything else (ints, bools, strings, functions) is *static*: part of the
compiled program's identity, so Python control flow may depend on it. :func:`pack_args` wraps
static leaves in :class:`Static` so that a tuple of arguments can be stored in a trace (a pytree)
with only its data as leaves.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> packed = pack_args((jnp.ones(2), 3, "mode"))
    >>> len(jax.tree_util.tree_leaves(packed))
    1
    >>> unpack_args(packed)[1:]
    (3, 'mode')
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import keys
from .choicemap import ChoiceMap
from .errors import ModelError, fmt_addr  # noqa: F401  (ModelError: used by the doctests)

__all__ = ["Static", "is_data", "pack_args", "unpack_args", "data_split", "as_choicemap", "as_args_tuple",
           "check_key"]


@jax.tree_util.register_pytree_node_class
class Static:
    """A non-array value carried as static pytree structure (no leaves)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def tree_flatten(self):
        return (), self.value

    @classmethod
    def tree_unflatten(cls, aux, _):
        return cls(aux)

    def __repr__(self):
        return f"Static({self.value!r})"


def is_data(x) -> bool:
    """Arrays, tracers, numpy values and Python floats are data; everything else is static."""
    return isinstance(x, (jax.Array, np.ndarray, np.generic, float, complex, jax.core.Tracer))


def pack_args(args):
    """``args`` with every static (non-data) leaf wrapped in :class:`Static` (see the module doc)."""
    return jax.tree_util.tree_map(lambda x: x if is_data(x) else Static(x), args)


def unpack_args(args):
    """The inverse of :func:`pack_args`."""
    return jax.tree_util.tree_map(
        lambda x: x.value if isinstance(x, Static) else x, args, is_leaf=lambda x: isinstance(x, Static)
    )


def data_split(args):
    """``(structure, data, rebuild)`` of a tuple of model arguments: ``structure`` is hashable (if
    the static leaves are) and equal for arguments that trace to the same program (tree structure,
    static leaves, the data leaves' shapes and dtypes); ``data`` are the data leaves;
    ``rebuild(new_data)`` is ``args`` with those leaves replaced (e.g. by tracers).

    Examples:
        >>> import jax.numpy as jnp
        >>> structure, data, rebuild = data_split((jnp.ones(2), 3))
        >>> len(data), rebuild([jnp.zeros(2)])[1]
        (1, 3)
        >>> structure == data_split((jnp.zeros(2), 3))[0]
        True
    """
    leaves, treedef = jax.tree_util.tree_flatten(args)
    dyn = [i for i, x in enumerate(leaves) if is_data(x)]
    is_dyn = set(dyn)
    static = tuple(x for i, x in enumerate(leaves) if i not in is_dyn)
    structure = (treedef, static, tuple((jnp.shape(leaves[i]), jnp.result_type(leaves[i])) for i in dyn))

    def rebuild(values):
        new = list(leaves)
        for i, v in zip(dyn, values):
            new[i] = v
        return jax.tree_util.tree_unflatten(treedef, new)

    return structure, [leaves[i] for i in dyn], rebuild


def as_choicemap(x, what: str = "choices") -> ChoiceMap:
    """``x`` as a :class:`ChoiceMap`: ``None`` is empty, a dict is converted, Python lists of numbers
    become arrays; anything else is a ``TypeError`` naming ``what``.

    Examples:
        >>> as_choicemap({"y": [1.0, 2.0]})["y"].shape
        (2,)
    """
    if x is None:
        return ChoiceMap.empty()
    if isinstance(x, dict):
        x = ChoiceMap(x)
    if isinstance(x, ChoiceMap):
        return _lists_to_arrays(x, what)
    raise TypeError(f"{what} must be a ppl.ChoiceMap (or a dict of address -> value), got {type(x).__name__}")


_as_choicemap = as_choicemap


def _lists_to_arrays(chm: ChoiceMap, what: str) -> ChoiceMap:
    """Python lists/tuples of numbers given as values become arrays (they would otherwise be
    pytrees of separate scalars); anything else that is not rectangular raises a ShapeError."""
    from .choicemap import Masked
    from .errors import ShapeError

    def is_seq(v):
        return isinstance(v, (list, tuple))

    leaves = chm.leaves()
    if not any(is_seq(v.value if isinstance(v, Masked) else v) or (isinstance(v, Masked) and is_seq(v.flag))
               for _, v in leaves):
        return chm

    def arr(v, path):
        if not is_seq(v):
            return v
        try:
            return jnp.asarray(v)
        except (TypeError, ValueError) as e:
            raise ShapeError(
                f"{what}: the value at address {fmt_addr(path)} is a Python {type(v).__name__} that is "
                f"not a rectangular list of numbers ({e}); pass an array, e.g. jnp.array(...)."
            ) from e

    for path, v in leaves:
        if isinstance(v, Masked):
            new = Masked(arr(v.value, path), arr(v.flag, path))
        else:
            new = arr(v, path)
        if new is not v:
            chm = chm.set(path, new) if path else ChoiceMap.value(new)
    return chm


def as_args_tuple(args, where: str, name: str = "args") -> tuple:
    """``args`` as a tuple of model arguments, or an :class:`~ppl.errors.ArgumentError` naming
    ``name`` and ``where`` (a list is accepted; a single bare value is the common slip).

    Examples:
        >>> as_args_tuple([1.0, 2], "importance.sample")
        (1.0, 2)
        >>> try:
        ...     as_args_tuple(3, "importance.sample")
        ... except ModelError as e:
        ...     print(str(e).split(";")[0])
        importance.sample: args must be a tuple of the model's arguments, got int 3
    """
    if isinstance(args, tuple):
        return args
    if isinstance(args, list):
        return tuple(args)
    from .errors import ArgumentError

    if isinstance(args, (dict, ChoiceMap)):
        shown = "(looks like observations: pass the model arguments first, then the observations)"
    elif isinstance(args, (jax.Array, np.ndarray)) and np.ndim(args) > 0:
        shown = f"of shape {np.shape(args)}"
    else:
        shown = repr(args)[:80]
    raise ArgumentError(
        f"{where}: {name} must be a tuple of the model's arguments, got {type(args).__name__} {shown}; "
        f"write (x,) for one argument, () for none."
    )


def check_key(key, method: str):
    """``key`` if it is a JAX PRNG key, else a ``TypeError`` naming ``method``.

    Examples:
        >>> import jax
        >>> check_key(jax.random.key(0), "m.simulate").shape
        ()
    """
    if keys.is_key(key):
        return key
    raise TypeError(
        f"{method}: the first argument must be a jax.random key (jax.random.key(0)), got {type(key).__name__}"
    )
