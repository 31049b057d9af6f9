"""Addresses and selections: the static half of the choice-map layer.

An *address* is a string; nesting (calling a generative function at an address) makes tuples of
strings, e.g. ``("group", "theta")``. :func:`normalize_addr` turns either form into a tuple path.

A :class:`Selection` is a static set of addresses (a selected address selects its whole subtree),
built with :func:`select`, :func:`select_all`, :func:`select_none` and combined with ``|``, ``&``
and ``~``. It carries no arrays (it is a pytree without leaves), so it can be a static argument of
``jax.jit``. Everything here is re-exported by :mod:`ppl.choicemap`.

Examples:
    >>> from ppl.selection import select
    >>> s = select("slope") | select(("group", "theta"))
    >>> s.contains(("group", "theta", "x")), s.contains("noise")
    (True, False)
    >>> s.named_paths()
    [('group', 'theta'), ('slope',)]
"""

from __future__ import annotations

import dataclasses

import jax

from .errors import AddressError

__all__ = ["Selection", "select", "select_all", "select_none", "normalize_addr"]


def normalize_addr(addr) -> tuple:
    """Turn ``"a"`` or ``("a", "b")`` into a tuple path, checking that every part is a string.

    Examples:
        >>> normalize_addr("a"), normalize_addr(("g", "x"))
        (('a',), ('g', 'x'))
    """
    if isinstance(addr, str):
        return (addr,)
    if isinstance(addr, tuple):
        for part in addr:
            if not isinstance(part, str):
                raise AddressError(
                    f"address {addr!r} contains {part!r}, which is not a string: addresses are "
                    "strings, and nested addresses are tuples of strings such as ('group', 'theta')."
                )
        return addr
    raise AddressError(
        f"address {addr!r} is not a string or a tuple of strings: write e.g. "
        "`normal(0.0, 1.0) @ \"x\"` or chm[\"group\", \"theta\"]."
    )


def _external_addr(path: tuple):
    return path[0] if len(path) == 1 else path


# ------------------------------------------------------------------------------------ Selection
class Selection:
    """A static set of addresses. Build with :func:`select`, combine with ``|``, ``&``, ``~``.

    Selecting an address selects everything nested under it.

    Examples:
        >>> s = select("slope", ("group", "theta"))
        >>> s.contains("slope"), s.contains(("group", "theta")), s.contains("noise")
        (True, True, False)
        >>> (~s).contains("noise")
        True
    """

    def has_root(self) -> bool:  # is the current node itself (the whole subtree) selected
        raise NotImplementedError

    def child(self, name: str) -> "Selection":
        raise NotImplementedError

    def contains(self, addr) -> bool:
        """Whether ``addr`` (or a prefix of it) is selected."""
        sel = self
        for part in normalize_addr(addr):
            if isinstance(sel, _AllSel):
                return True
            if isinstance(sel, _NoneSel):
                return False
            sel = sel.child(part)
        return sel.has_root()

    def __call__(self, addr) -> bool:
        return self.contains(addr)

    def __or__(self, other):
        return _UnionSel(self, other)

    def __and__(self, other):
        return _InterSel(self, other)

    def __invert__(self):
        return _ComplementSel(self)

    def is_static_empty(self) -> bool:
        return isinstance(self, _NoneSel)

    def named_paths(self, all_operators: bool = False) -> list:
        """The address paths (tuples) this selection names explicitly, sorted.

        Paths given to :func:`select` count, through unions (``|``). Intersections (``&``) and
        complements (``~``) name none by default (``~select("x")`` does not select ``"x"``); with
        ``all_operators=True`` the paths under them are listed too. ``select_all()`` and
        ``select_none()`` name none. Use it to check that a selection refers to addresses that
        exist.

        Examples:
            >>> (select("b", ("g", "x")) | select("a")).named_paths()
            [('a',), ('b',), ('g', 'x')]
            >>> (~select("x")).named_paths(), (~select("x")).named_paths(all_operators=True)
            ([], [('x',)])
        """
        return sorted(set(self._named(all_operators)))

    def _named(self, all_operators: bool) -> list:
        return []


def _sel_pytree(cls):
    jax.tree_util.register_pytree_node(cls, lambda s: ((), s), lambda aux, _: aux)
    return cls


@_sel_pytree
@dataclasses.dataclass(frozen=True)
class _AllSel(Selection):
    def has_root(self):
        return True

    def child(self, name):
        return self

    def __repr__(self):
        return "select_all()"


@_sel_pytree
@dataclasses.dataclass(frozen=True)
class _NoneSel(Selection):
    def has_root(self):
        return False

    def child(self, name):
        return self

    def __repr__(self):
        return "select_none()"


@_sel_pytree
@dataclasses.dataclass(frozen=True)
class _AddrSel(Selection):
    paths: frozenset

    def has_root(self):
        return () in self.paths

    def child(self, name):
        if () in self.paths:
            return _AllSel()
        rest = frozenset(p[1:] for p in self.paths if p[0] == name)
        return _AddrSel(rest) if rest else _NoneSel()

    def __repr__(self):
        return "select(" + ", ".join(repr(_external_addr(p)) for p in sorted(self.paths)) + ")"

    def _named(self, all_operators):
        return list(self.paths)


@_sel_pytree
@dataclasses.dataclass(frozen=True)
class _ComplementSel(Selection):
    inner: Selection

    def has_root(self):
        return not self.inner.has_root()

    def child(self, name):
        c = self.inner.child(name)
        if isinstance(c, _NoneSel):
            return _AllSel()
        if isinstance(c, _AllSel):
            return _NoneSel()
        return _ComplementSel(c)

    def __repr__(self):
        return f"~{self.inner!r}"

    def _named(self, all_operators):
        return self.inner._named(all_operators) if all_operators else []


@_sel_pytree
@dataclasses.dataclass(frozen=True)
class _UnionSel(Selection):
    a: Selection
    b: Selection

    def has_root(self):
        return self.a.has_root() or self.b.has_root()

    def child(self, name):
        a, b = self.a.child(name), self.b.child(name)
        if isinstance(a, _NoneSel):
            return b
        if isinstance(b, _NoneSel):
            return a
        return _UnionSel(a, b)

    def __repr__(self):
        return f"({self.a!r} | {self.b!r})"

    def _named(self, all_operators):
        return self.a._named(all_operators) + self.b._named(all_operators)


@_sel_pytree
@dataclasses.dataclass(frozen=True)
class _InterSel(Selection):
    a: Selection
    b: Selection

    def has_root(self):
        return self.a.has_root() and self.b.has_root()

    def child(self, name):
        a, b = self.a.child(name), self.b.child(name)
        if isinstance(a, _NoneSel) or isinstance(b, _NoneSel):
            return _NoneSel()
        return _InterSel(a, b)

    def __repr__(self):
        return f"({self.a!r} & {self.b!r})"

    def _named(self, all_operators):
        return self.a._named(all_operators) + self.b._named(all_operators) if all_operators else []


def select(*addrs) -> Selection:
    """Select addresses (strings or tuples); a selected address selects its whole subtree.

    Examples:
        >>> select("x", ("g", "y")).contains(("g", "y"))
        True
    """
    if not addrs:
        return _NoneSel()
    return _AddrSel(frozenset(normalize_addr(a) for a in addrs))


def select_all() -> Selection:
    """The selection of every address.

    Examples:
        >>> select_all().contains(("any", "thing"))
        True
    """
    return _AllSel()


def select_none() -> Selection:
    """The empty selection.

    Examples:
        >>> select_none().contains("x")
        False
    """
    return _NoneSel()
