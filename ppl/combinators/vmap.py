"""``ppl.vmap`` and ``gf.repeat(n)``: independent copies of a generative function, vectorized
with ``jax.vmap``; choices and return values gain a leading axis.

Examples:
    >>> import jax, jax.numpy as jnp, ppl
    >>> tr = ppl.vmap(ppl.normal, in_axes=(0, None)).simulate(jax.random.key(0), jnp.zeros(3), 1.0)
    >>> tr.choices[()].shape, tr.score.shape
    ((3,), ())
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import keys
from ..choicemap import ChoiceMap
from ..core import GenerativeFunction, current_path, pack_args, trace_dataclass
from ..errors import ModelError, ShapeError, fmt_addr
from ._shared import StackedTrace, leading_check, total

__all__ = ["vmap", "repeat", "VmapGF", "VmapTrace"]


@trace_dataclass
class VmapTrace(StackedTrace):
    """The trace of :class:`VmapGF`: the copies' traces stacked along a leading axis."""


@dataclasses.dataclass(frozen=True, eq=True)
class VmapGF(GenerativeFunction):
    """Independent copies of ``gf``, vectorized with ``jax.vmap`` (see :func:`vmap`)."""

    gf: Any
    in_axes: Any = 0
    n: Any = None

    @property
    def name(self):
        return f"vmap({self.gf.name})" if self.n is None else f"{self.gf.name}.repeat({self.n})"

    def _axes(self, args):
        if isinstance(self.in_axes, (tuple, list)):
            if len(self.in_axes) != len(args):
                raise ModelError(
                    f"{self.name} at {fmt_addr(current_path())}: in_axes has {len(self.in_axes)} "
                    f"entries but the call has {len(args)} arguments"
                )
            return tuple(self.in_axes)
        return (self.in_axes,) * len(args)

    def _size(self, args, axes):
        if self.n is not None:
            return self.n
        sizes = set()
        for a, ax in zip(args, axes):
            if ax is None:
                continue
            for leaf in jax.tree_util.tree_leaves(a):
                shape = jnp.shape(leaf)
                if len(shape) <= ax:
                    raise ShapeError(
                        f"{self.name} at {fmt_addr(current_path())}: an argument of shape {shape} "
                        f"has no axis {ax} to map over; set in_axes=None for unbatched arguments"
                    )
                sizes.add(shape[ax])
        if len(sizes) != 1:
            raise ShapeError(
                f"{self.name} at {fmt_addr(current_path())}: mapped arguments have sizes "
                f"{sorted(sizes)}; they must all share one size along their mapped axis "
                "(use gf.repeat(n) when no argument is mapped)"
            )
        return sizes.pop()

    def _prep(self, args, key=None):
        """Axes, size, per-copy keys and their in_axes (lane keys when the key is a plain key)."""
        axes = self._axes(args)
        n = self._size(args, axes)
        if key is None:
            return axes, n, None, None
        key = keys.raw(key)
        if isinstance(key, keys.LaneKey):
            return axes, n, keys.split(key, n), 0
        return axes, n, keys.lanes(key, n), keys.LANE_AXES

    def _trace(self, args, tr, retval):
        return VmapTrace(self, pack_args(args), retval, total(tr.score), tr.strip())

    def _simulate(self, key, *args):
        axes, n, ks, kax = self._prep(args, key)
        tr, rv = jax.vmap(lambda k, *a: _with_retval(self.gf.simulate(k, *a)), in_axes=(kax, *axes))(ks, *args)
        return self._trace(args, tr, rv)

    def _assess(self, choices, *args):
        axes, n, _, _ = self._prep(args)
        choices = leading_check(choices, n, f"{self.name}.assess")
        lp, rv = jax.vmap(self.gf.assess, in_axes=(0, *axes))(choices, *args)
        return total(lp), rv

    def _generate(self, key, constraints, *args):
        axes, n, ks, kax = self._prep(args, key)
        constraints = leading_check(constraints, n, f"{self.name}.generate")

        def one(k, c, *a):
            tr, w = self.gf.generate(k, c, *a)
            return tr.strip(), tr.retval, w

        tr, rv, w = jax.vmap(one, in_axes=(kax, 0, *axes))(ks, constraints, *args)
        return VmapTrace(self, pack_args(args), rv, total(tr.score), tr), total(w)

    def _edit(self, fn, key, trace, arg, args):
        axes, n, ks, kax = self._prep(args, key)

        def one(k, t, c, *a):
            tr, w, d = fn(k, t, c, *a)
            return tr.strip(), tr.retval, w, d

        arg_axis = 0 if isinstance(arg, ChoiceMap) else None
        tr, rv, w, d = jax.vmap(one, in_axes=(kax, 0, arg_axis, *axes))(ks, trace.inner, arg, *args)
        return VmapTrace(self, pack_args(args), rv, total(tr.score), tr), total(w), d

    def _update(self, key, trace, constraints, *args):
        constraints = leading_check(constraints, self._prep(args)[1], f"{self.name}.update")
        return self._edit(self.gf.update, key, trace, constraints, args)

    def _regenerate(self, key, trace, selection, *args):
        return self._edit(lambda k, t, _, *a: self.gf.regenerate(k, t, selection, *a), key, trace, None, args)


def _with_retval(tr):
    return tr.strip(), tr.retval


def vmap(gf: GenerativeFunction, in_axes=0) -> VmapGF:
    """Vectorize ``gf`` over its arguments: choices and return values gain a leading axis.

    ``in_axes`` is an int/None for every argument or a tuple with one entry per argument.

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> tr = ppl.vmap(ppl.normal, in_axes=(0, None)).simulate(jax.random.key(0), jnp.zeros(3), 1.0)
        >>> tr.choices[()].shape
        (3,)
    """
    if not isinstance(gf, GenerativeFunction):
        raise TypeError(f"ppl.vmap expects a generative function, got {gf!r}")
    return VmapGF(gf, tuple(in_axes) if isinstance(in_axes, list) else in_axes)


def repeat(gf: GenerativeFunction, n: int) -> VmapGF:
    """``n`` independent copies of ``gf`` called with the same arguments.

    Examples:
        >>> import jax, ppl
        >>> ppl.repeat(ppl.normal, 3).simulate(jax.random.key(0), 0.0, 1.0).choices[()].shape
        (3,)
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ModelError(f"repeat: n must be a positive Python int, got {n!r}")
    return VmapGF(gf, None, int(n))

