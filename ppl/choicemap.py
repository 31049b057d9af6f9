"""Choice maps, masked choices and selections.

A :class:`ChoiceMap` is an immutable tree from addresses to values. Addresses are strings;
nesting (calling a generative function at an address) makes tuples. Choice maps are pytrees: the
set of addresses is static structure, the values are leaves, so they pass through ``jax.jit``,
``jax.vmap`` and ``jax.lax.scan`` unchanged.

A :class:`Masked` value is present only where its flag holds (the choices of untaken branches).

A :class:`Selection` is a static set of addresses (with prefixes selecting whole subtrees, a
complement and set algebra). It carries no arrays. Selections and :func:`normalize_addr` live in
:mod:`ppl.selection` and are re-exported here; the algebra of masked choice maps (combining the
choices of alternative branches) is :mod:`ppl.masking`.

Examples:
    >>> import jax.numpy as jnp
    >>> from ppl import ChoiceMap, select
    >>> chm = ChoiceMap({"slope": 0.3, ("group", "theta"): jnp.zeros(3)})
    >>> float(chm["slope"]), chm["group", "theta"].shape
    (0.3, (3,))
    >>> "slope" in chm, ("group", "theta") in chm, "noise" in chm
    (True, True, False)
    >>> sorted(a for a, _ in chm.filter(select("slope")))
    ['slope']
"""

from __future__ import annotations

from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from .errors import AddressError, fmt_addr
from .selection import (  # noqa: F401  (re-exported: ppl.choicemap is the layer's front door)
    Selection,
    _AddrSel,
    _AllSel,
    _ComplementSel,
    _external_addr,
    _InterSel,
    _NoneSel,
    _UnionSel,
    normalize_addr,
    select,
    select_all,
    select_none,
)

__all__ = [
    "ChoiceMap",
    "Masked",
    "Selection",
    "select",
    "select_all",
    "select_none",
    "normalize_addr",
]


def concrete_bool(flag):
    """Return True/False if ``flag`` is concretely all-true/all-false, else None (traced or mixed)."""
    if isinstance(flag, (jax.core.Tracer, jax.ShapeDtypeStruct)):
        return None
    if flag is True or flag is False:
        return flag
    arr = np.asarray(flag)
    if arr.all():
        return True
    if not arr.any():
        return False
    return None


# --------------------------------------------------------------------------------------- Masked
@jax.tree_util.register_pytree_node_class
class Masked:
    """A value that is present only where ``flag`` is true.

    Traces of stochastic branching (``ppl.cond``/``ppl.switch``) hold the choices of every branch,
    each masked by whether its branch was taken; outside ``jit`` (concrete flags) untaken choices
    disappear from ``trace.choices``. Constraints may also be masked, e.g. a time series with
    missing observations: ``ChoiceMap({"y": Masked(ys, observed)})`` where ``observed`` has shape
    ``(T,)`` (a prefix of the value's shape).

    Examples:
        >>> import jax.numpy as jnp
        >>> m = Masked(jnp.array([1.0, 2.0]), jnp.array([True, False]))
        >>> m.flag.tolist()
        [True, False]
    """

    __slots__ = ("value", "flag")

    def __init__(self, value, flag):
        self.value = value
        self.flag = flag

    def tree_flatten(self):
        return (self.value, self.flag), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.value, obj.flag = children
        return obj

    def __repr__(self):
        return f"Masked({_short(self.value)}, flag={_short(self.flag)})"


def _short(v) -> str:
    if isinstance(v, jax.core.Tracer):
        return f"<traced {jnp.dtype(v.dtype).name}{list(v.shape)}>"
    shape = np.shape(v)
    if shape == () or int(np.prod(shape)) <= 6:
        try:
            return np.array2string(np.asarray(v), precision=4, separator=", ")
        except Exception:  # pragma: no cover - exotic leaf types
            return repr(v)
    return f"{np.asarray(v).dtype.name}{list(shape)}"


def mask_and(flag_a, flag_b):
    if flag_a is True:
        return flag_b
    if flag_b is True:
        return flag_a
    return jnp.logical_and(flag_a, flag_b)


# ------------------------------------------------------------------------------------ ChoiceMap
_NO_VALUE = None  # sentinel: a node without a value


@jax.tree_util.register_pytree_node_class
class ChoiceMap:
    """An immutable tree of choices: ``ChoiceMap({"slope": 0.3, ("group", "theta"): arr})``.

    Operations: indexing ``chm["group", "theta"]`` (a leaf value, or the sub-map of an inner
    node), ``addr in chm``, ``chm | other`` (merge; overlapping addresses are an error),
    ``chm.filter(selection)``, iteration over ``(address, value)`` pairs (address a string at
    depth one, a tuple deeper), ``len(chm)``.

    Examples:
        >>> chm = ChoiceMap({"a": 1.0}) | ChoiceMap({("b", "c"): 2.0})
        >>> [(a, float(v)) for a, v in chm]
        [('a', 1.0), (('b', 'c'), 2.0)]
        >>> chm["b"]["c"]
        2.0
    """

    __slots__ = ("_value", "_children")

    def __init__(self, mapping=None):
        self._value = _NO_VALUE
        self._children = {}
        if mapping is None:
            return
        if isinstance(mapping, ChoiceMap):
            self._value, self._children = mapping._value, dict(mapping._children)
            return
        if not isinstance(mapping, dict):
            raise TypeError(
                f"ChoiceMap expects a dict from addresses to values, got {type(mapping).__name__}; "
                "use ChoiceMap.value(v) for a single value at the root."
            )
        result = ChoiceMap.empty()
        for addr, value in mapping.items():
            path = normalize_addr(addr)
            if isinstance(value, dict):
                value = ChoiceMap(value)
            sub = value if isinstance(value, ChoiceMap) else ChoiceMap.value(value)
            result = result | ChoiceMap._nest(path, sub)
        self._value, self._children = result._value, result._children

    # -- constructors ---------------------------------------------------------------------------
    @staticmethod
    def empty() -> "ChoiceMap":
        """The choice map with no choices.

        Examples:
            >>> ChoiceMap.empty().is_empty()
            True
        """
        return ChoiceMap()

    @staticmethod
    def value(v) -> "ChoiceMap":
        """A choice map holding one value at the root address ``()`` (a distribution's choices).

        Examples:
            >>> float(ChoiceMap.value(2.0)[()])
            2.0
        """
        chm = ChoiceMap()
        chm._value = v
        return chm

    @staticmethod
    def _make(value, children: dict) -> "ChoiceMap":
        chm = object.__new__(ChoiceMap)
        chm._value = value
        chm._children = children
        return chm

    @staticmethod
    def _nest(path: tuple, sub: "ChoiceMap") -> "ChoiceMap":
        for part in reversed(path):
            sub = ChoiceMap._make(_NO_VALUE, {part: sub})
        return sub

    @staticmethod
    def from_children(children: dict) -> "ChoiceMap":
        """Build a choice map from ``{name: ChoiceMap}``, dropping empty children (internal)."""
        return ChoiceMap._make(_NO_VALUE, {k: v for k, v in children.items() if not v.is_empty()})

    @staticmethod
    def from_leaves(pairs) -> "ChoiceMap":
        """A choice map from ``(path, leaf)`` pairs: the inverse of :meth:`leaves`.

        ``path`` is a tuple of address parts (``()`` for a value at the root); ``leaf`` is stored
        as given (a :class:`Masked` leaf stays masked, even where its flag is concretely false).
        One pass, linear in the number of leaves; sub-maps are ordered by first appearance. Two
        leaves at one path, or a leaf at a prefix of another leaf's path, raise
        :class:`ppl.AddressError`, whose ``path`` attribute is the conflicting path.

        Examples:
            >>> chm = ChoiceMap({"a": 1.0, ("b", "c"): 2.0})
            >>> ChoiceMap.from_leaves([(p, v * 10) for p, v in chm.leaves()]) == ChoiceMap({"a": 10.0, ("b", "c"): 20.0})
            True
            >>> ChoiceMap.from_leaves([(("b",), 1.0), (("b", "c"), 2.0)])
            Traceback (most recent call last):
            ...
            ppl.errors.AddressError: from_leaves: address 'b' holds a value and also nested choices; a leaf cannot sit above another leaf
        """
        root = [_NO_VALUE, {}]
        for path, v in pairs:
            node = root
            for i, part in enumerate(path):
                if node[0] is not _NO_VALUE:
                    raise _leaf_conflict(path[:i], "holds a value and also nested choices; a leaf "
                                                   "cannot sit above another leaf")
                node = node[1].setdefault(part, [_NO_VALUE, {}])
            if node[0] is not _NO_VALUE:
                raise _leaf_conflict(path, "is given twice; give one leaf per address")
            if node[1]:
                raise _leaf_conflict(path, "holds a value and also nested choices; a leaf cannot sit "
                                           "above another leaf")
            node[0] = v

        def make(node):
            return ChoiceMap._make(node[0], {k: make(c) for k, c in node[1].items()})

        return make(root)

    # -- pytree ---------------------------------------------------------------------------------
    # The whole tree is one pytree node (one Python call to flatten, not one per inner node):
    # the static structure is a nested tuple, the leaves are the values in sorted-address order.
    def tree_flatten(self):
        leaves: list = []
        return leaves, _flatten_struct(self, leaves)

    @classmethod
    def tree_unflatten(cls, aux, leaves):
        return _unflatten_struct(aux, iter(leaves))

    # -- structure ------------------------------------------------------------------------------
    def has_value(self) -> bool:
        """Whether a value sits at this node's root (not a masked-out one)."""
        if self._value is _NO_VALUE:
            return False
        if isinstance(self._value, Masked):
            return concrete_bool(self._value.flag) is not False
        return True

    def get_value(self):
        """The value at the root (a ``Masked`` if the value is conditionally present)."""
        if self._value is _NO_VALUE:
            raise AddressError("this choice map has no value at its root address ()")
        return self._value

    def raw_value(self):
        """The root value or ``None`` (internal: includes ``Masked`` wrappers)."""
        return self._value

    def child_names(self) -> tuple:
        return tuple(self._children)

    def get_submap(self, addr) -> "ChoiceMap":
        """The sub-map at ``addr`` (empty if absent).

        Examples:
            >>> chm = ChoiceMap({("g", "x"): 1.0})
            >>> float(chm.get_submap("g")["x"])
            1.0
        """
        path = addr if isinstance(addr, tuple) else (addr,)
        node = self
        for part in path:
            node = node._children.get(part)
            if node is None:
                return ChoiceMap.empty()
        return node

    def is_empty(self) -> bool:
        """True if the map holds no (possibly present) value."""
        if self.has_value():
            return False
        return all(c.is_empty() for c in self._children.values())

    # -- user API -------------------------------------------------------------------------------
    def __getitem__(self, addr):
        path = () if addr == () else normalize_addr(addr)
        node = self
        for i, part in enumerate(path):
            node = node._children.get(part)
            if node is None:
                raise AddressError(
                    f"no choice at address {fmt_addr(path)}: {fmt_addr(path[: i + 1])} is not in "
                    f"this choice map (it has {sorted(self._children)} at top level)"
                )
        if node._value is not _NO_VALUE and not node._children:
            v = node._value
            if isinstance(v, Masked):
                present = concrete_bool(v.flag)
                if present is False:
                    raise AddressError(
                        f"the choice at {fmt_addr(path)} is not present (its branch was not taken)"
                    )
                return v.value
            return v
        if node.is_empty():
            raise AddressError(f"no choice at address {fmt_addr(path)}")
        return node

    def __contains__(self, addr) -> bool:
        path = () if addr == () else normalize_addr(addr)
        node = self
        for part in path:
            node = node._children.get(part)
            if node is None:
                return False
        return not node.is_empty()

    def __or__(self, other: "ChoiceMap") -> "ChoiceMap":
        if not isinstance(other, ChoiceMap):
            return NotImplemented
        return _merge(self, other, ())

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for path, value in self.leaves():
            if isinstance(value, Masked):
                present = concrete_bool(value.flag)
                if present is False:
                    continue
                value = value.value
            yield _external_addr(path) if path else (), value

    def leaves(self) -> list[tuple[tuple, Any]]:
        """All ``(path, value)`` pairs including masked ones (internal)."""
        out = []
        self._collect((), out)
        return out

    def _collect(self, prefix, out):
        if self._value is not _NO_VALUE:
            out.append((prefix, self._value))
        for k in sorted(self._children):
            self._children[k]._collect(prefix + (k,), out)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def items(self):
        """List of ``(address, value)`` pairs (see iteration)."""
        return list(self)

    def addresses(self) -> list:
        """The addresses present in the map.

        Examples:
            >>> ChoiceMap({"a": 1.0, ("b", "c"): 2.0}).addresses()
            ['a', ('b', 'c')]
        """
        return [a for a, _ in self]

    def to_dict(self) -> dict:
        """A flat ``{address: value}`` dict."""
        return dict(self)

    def filter(self, selection: "Selection") -> "ChoiceMap":
        """The sub-map of choices whose address is selected.

        Examples:
            >>> chm = ChoiceMap({"a": 1.0, "b": 2.0})
            >>> chm.filter(select("b")).addresses()
            ['b']
        """
        if not isinstance(selection, Selection):
            raise TypeError(f"filter expects a Selection (see ppl.select), got {selection!r}")
        value = self._value if (self._value is not _NO_VALUE and selection.has_root()) else _NO_VALUE
        children = {}
        for k, c in self._children.items():
            sub = selection.child(k)
            if isinstance(sub, _NoneSel):
                continue
            f = c.filter(sub)
            if not f.is_empty():
                children[k] = f
        return ChoiceMap._make(value, children)

    def without(self, name: str) -> "ChoiceMap":
        """A copy without the top-level sub-map ``name`` (absent names are fine).

        Examples:
            >>> ChoiceMap({"component": 1, ("x", "y"): 2.0}).without("component").addresses()
            [('x', 'y')]
        """
        return ChoiceMap._make(self._value, {k: v for k, v in self._children.items() if k != name})

    def set(self, addr, value) -> "ChoiceMap":
        """A copy with ``addr`` set to ``value`` (replacing any existing value).

        Examples:
            >>> float(ChoiceMap({"a": 1.0}).set("a", 5.0)["a"])
            5.0
        """
        path = normalize_addr(addr)
        return _merge(self, ChoiceMap._nest(path, ChoiceMap.value(value)), (), overwrite=True)

    def map(self, fn) -> "ChoiceMap":
        """Apply ``fn`` to every leaf value (masks are kept)."""

        def f(v):
            if isinstance(v, Masked):
                return Masked(fn(v.value), v.flag)
            return fn(v)

        return _map_nodes(self, f)

    def __repr__(self):
        lines = ["ChoiceMap"]
        _render(self, "", lines)
        return "\n".join(lines) if len(lines) > 1 else "ChoiceMap(empty)"

    def __eq__(self, other):  # structural + value equality, for tests and debugging
        if not isinstance(other, ChoiceMap):
            return NotImplemented
        a, ta = jax.tree_util.tree_flatten(self)
        b, tb = jax.tree_util.tree_flatten(other)
        return ta == tb and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))

    __hash__ = None


def _leaf_conflict(path, what) -> AddressError:
    err = AddressError(f"from_leaves: address {fmt_addr(tuple(path))} {what}")
    err.path = tuple(path)
    return err


def _flatten_struct(chm: ChoiceMap, leaves: list):
    has_value = chm._value is not _NO_VALUE
    if has_value:
        leaves.append(chm._value)
    children = chm._children
    return (has_value, tuple((k, _flatten_struct(children[k], leaves)) for k in sorted(children)))


def _unflatten_struct(struct, it) -> ChoiceMap:
    has_value, children = struct
    value = next(it) if has_value else _NO_VALUE
    return ChoiceMap._make(value, {k: _unflatten_struct(c, it) for k, c in children})


def _map_nodes(chm: ChoiceMap, f) -> ChoiceMap:
    value = f(chm._value) if chm._value is not _NO_VALUE else _NO_VALUE
    return ChoiceMap._make(value, {k: _map_nodes(c, f) for k, c in chm._children.items()})


def _merge(a: ChoiceMap, b: ChoiceMap, prefix: tuple, overwrite: bool = False) -> ChoiceMap:
    if a._value is not _NO_VALUE and b._value is not _NO_VALUE and not overwrite:
        raise AddressError(
            f"cannot merge choice maps: both have a value at address {fmt_addr(prefix)}; "
            "overlapping addresses are ambiguous (use .set(addr, value) to replace a value)"
        )
    if (a._value is not _NO_VALUE and b._children) or (b._value is not _NO_VALUE and a._children):
        if not overwrite:
            raise AddressError(
                f"cannot merge choice maps: address {fmt_addr(prefix)} is a value in one and a "
                "nested map in the other"
            )
    value = b._value if b._value is not _NO_VALUE else a._value
    children = dict(a._children)
    for k, c in b._children.items():
        children[k] = _merge(children[k], c, prefix + (k,), overwrite) if k in children else c
    return ChoiceMap._make(value, children)


def _render(chm: ChoiceMap, indent: str, lines: list):
    if chm.has_value():
        lines.append(f"{indent}└── {_describe(chm._value)}")
    keys = [k for k in chm._children if not chm._children[k].is_empty()]
    for i, k in enumerate(keys):
        c = chm._children[k]
        last = i == len(keys) - 1
        branch = "└── " if last else "├── "
        if c._value is not _NO_VALUE and not c._children:
            lines.append(f"{indent}{branch}{k}: {_describe(c._value)}")
        else:
            lines.append(f"{indent}{branch}{k}")
            _render(c, indent + ("    " if last else "│   "), lines)


def _describe(v) -> str:
    if isinstance(v, Masked):
        if concrete_bool(v.flag) is True:
            return _describe(v.value)
        return f"{_describe(v.value)} (masked by {_short(v.flag)})"
    if isinstance(v, (list, tuple)):  # converted to an array when a GFI method receives it
        try:
            v = np.asarray(v)
        except ValueError:
            return f"{v!r}  [ragged {type(v).__name__}]"
    shape = tuple(np.shape(v)) if not isinstance(v, jax.core.Tracer) else tuple(v.shape)
    dtype = jnp.result_type(v).name if not isinstance(v, jax.core.Tracer) else jnp.dtype(v.dtype).name
    return f"{_short(v)}  [{dtype}{list(shape)}]" if shape else f"{_short(v)}  [{dtype}]"
