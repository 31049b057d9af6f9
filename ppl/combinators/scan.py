"""``ppl.scan``: a step generative function ``(carry, x) -> (carry, y)`` iterated with
``lax.scan``; choices are stacked over time (leading axis ``T``).

Examples:
    >>> import jax, ppl
    >>> @ppl.gen
    ... def step(x, _):
    ...     x = ppl.normal(0.9 * x, 1.0) @ "x"
    ...     ppl.normal(x, 0.5) @ "y"
    ...     return x, x
    >>> hmm = ppl.scan(step, length=5)
    >>> tr = hmm.simulate(jax.random.key(0), 0.0, None)
    >>> tr.choices["y"].shape, hmm.n_steps(None)
    ((5,), 5)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from .. import keys
from ..choicemap import ChoiceMap
from ..core import GenerativeFunction, current_path, pack_args, trace_dataclass
from ..errors import CarryShapeError, ModelError, ShapeError, fmt_addr
from ._shared import StackedTrace, leading_check, total

__all__ = ["scan", "ScanGF", "ScanTrace"]


@trace_dataclass
class ScanTrace(StackedTrace):
    """The trace of :class:`ScanGF`: the steps' traces stacked along a leading time axis."""


def _strong(tree):
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), tree)


@dataclasses.dataclass(frozen=True, eq=True)
class ScanGF(GenerativeFunction):
    """A step generative function iterated over time (see :func:`scan`)."""

    step: Any
    length: Any = None

    @property
    def name(self):
        return f"scan({self.step.name})"

    def n_steps(self, xs) -> int:
        """The number of steps of a call with inputs ``xs``: ``length`` when given (checked against
        the leading size of every leaf of ``xs``), else the leading size of ``xs``'s leaves.

        Examples:
            >>> import jax.numpy as jnp, ppl
            >>> @ppl.gen
            ... def step(c, x):
            ...     return c, ppl.normal(x, 1.0) @ "y"
            >>> ppl.scan(step).n_steps(jnp.zeros(7)), ppl.scan(step, length=3).n_steps(None)
            (7, 3)
        """
        leaves = jax.tree_util.tree_leaves(xs)
        if self.length is not None:
            for leaf in leaves:
                if jnp.shape(leaf)[:1] != (self.length,):
                    raise ShapeError(
                        f"{self.name} at {fmt_addr(current_path())}: xs has leading size "
                        f"{jnp.shape(leaf)[:1]} but length={self.length}"
                    )
            return self.length
        if not leaves:
            raise ModelError(f"{self.name} at {fmt_addr(current_path())}: give length= when xs is None")
        return jnp.shape(leaves[0])[0]

    def _split_retval(self, retval, carry):
        if not (isinstance(retval, tuple) and len(retval) == 2):
            raise ModelError(
                f"{self.name} at {fmt_addr(current_path())}: the step must return a pair "
                f"(new_carry, y), got {type(retval).__name__}"
            )
        new_carry, y = retval
        s_in = jax.tree_util.tree_map(lambda x: (jnp.shape(x), jnp.result_type(x).name), carry)
        s_out = jax.tree_util.tree_map(lambda x: (jnp.shape(x), jnp.result_type(x).name), new_carry)
        if jax.tree_util.tree_structure(carry) != jax.tree_util.tree_structure(new_carry) or s_in != s_out:
            raise CarryShapeError(
                f"{self.name} at {fmt_addr(current_path())}: the step received a carry of "
                f"{s_in} but returned {s_out}; the carry must keep its structure, shape and dtype "
                "across steps (cast with .astype or pad to a fixed size)."
            )
        new_carry = jax.tree_util.tree_map(lambda a, b: jnp.asarray(b, jnp.result_type(a)), carry, new_carry)
        return new_carry, y

    def _scan(self, body, carry, xs, extra, T):
        carry = _strong(carry)
        return jax.lax.scan(body, carry, (extra, xs), length=T)

    def _step_keys(self, key, carry, xs, T):
        """Per-step keys with the step's top-level site keys precomputed for all steps at once.

        Deriving a site key inside the loop body costs one hash per site and step (run one at a
        time); here it is one vectorized hash per address, outside the loop. Bit-identical to
        deriving them inside.
        """
        from ..core import address_hash
        from ..tracing import GenFn

        step_keys = keys.split(key, T)
        if not isinstance(self.step, GenFn):
            return step_keys
        x_s = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a)[1:], jnp.result_type(a)), xs)
        c_s = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), _strong(carry))
        tr_s = jax.eval_shape(lambda k, c, x: self.step.simulate(k, c, x).strip(), jax.random.key(0), c_s, x_s)
        table = {a: jax.vmap(lambda k, h=address_hash(a): keys.fold_in(k, h))(step_keys) for a in tr_s.subtraces}
        return keys.KeyTable(step_keys, table)

    def _simulate(self, key, carry, xs):
        T = self.n_steps(xs)

        def body(c, kx):
            k, x = kx
            tr = self.step.simulate(k, c, x)
            c2, y = self._split_retval(tr.retval, c)
            return c2, (tr.strip(), y)

        cT, (inner, ys) = self._scan(body, carry, xs, self._step_keys(key, carry, xs, T), T)
        return ScanTrace(self, pack_args((carry, xs)), (cT, ys), total(inner.score), inner)

    def _assess(self, choices, carry, xs):
        T = self.n_steps(xs)
        choices = leading_check(choices, T, f"{self.name}.assess")

        def body(c, cx):
            ch, x = cx
            lp, rv = self.step.assess(ch, c, x)
            c2, y = self._split_retval(rv, c)
            return c2, (lp, y)

        cT, (lps, ys) = self._scan(body, carry, xs, choices, T)
        return total(lps), (cT, ys)

    def _generate(self, key, constraints, carry, xs):
        T = self.n_steps(xs)
        constraints = leading_check(constraints, T, f"{self.name}.generate")

        def body(c, kx):
            (k, ch), x = kx
            tr, w = self.step.generate(k, ch, c, x)
            c2, y = self._split_retval(tr.retval, c)
            return c2, (tr.strip(), y, w)

        cT, (inner, ys, ws) = self._scan(body, carry, xs, (self._step_keys(key, carry, xs, T), constraints), T)
        return ScanTrace(self, pack_args((carry, xs)), (cT, ys), total(inner.score), inner), total(ws)

    def _edit(self, fn, key, trace, arg, carry, xs):
        T = self.n_steps(xs)
        T_old = jax.tree_util.tree_leaves(trace.inner.score)[0].shape[0]
        if T != T_old:
            raise ModelError(
                f"{self.name} at {fmt_addr(current_path())}: update/regenerate cannot change the "
                f"number of steps ({T_old} -> {T}); for sequential inference use "
                "inference.smc.particle_filter, which extends step by step."
            )
        is_chm = isinstance(arg, ChoiceMap)
        if is_chm:
            arg = leading_check(arg, T, f"{self.name}.update")

        def body(c, kx):
            (k, t, a), x = kx
            tr, w, d = fn(k, t, a if is_chm else None, c, x)
            c2, y = self._split_retval(tr.retval, c)
            return c2, (tr.strip(), y, w, d)

        extra = (self._step_keys(key, carry, xs, T), trace.inner, arg if is_chm else None)
        cT, (inner, ys, ws, ds) = self._scan(body, carry, xs, extra, T)
        return ScanTrace(self, pack_args((carry, xs)), (cT, ys), total(inner.score), inner), total(ws), ds

    def _update(self, key, trace, constraints, carry, xs):
        return self._edit(self.step.update, key, trace, constraints, carry, xs)

    def _regenerate(self, key, trace, selection, carry, xs):
        return self._edit(lambda k, t, _, c, x: self.step.regenerate(k, t, selection, c, x), key, trace, None, carry, xs)


def scan(step: GenerativeFunction, length: int | None = None) -> ScanGF:
    """Iterate ``step(carry, x) -> (carry, y)`` over time; called with ``(init_carry, xs)``.

    Returns ``(final_carry, ys)``; choices are stacked over time (leading axis ``T``).

    Examples:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def rw(x, _):
        ...     x = ppl.normal(x, 1.0) @ "x"
        ...     return x, x
        >>> (final, xs), = [ppl.scan(rw, length=4).simulate(jax.random.key(0), 0.0, None).retval]
        >>> xs.shape
        (4,)
    """
    if not isinstance(step, GenerativeFunction):
        raise TypeError(f"ppl.scan expects a generative function step, got {step!r}")
    return ScanGF(step, length)

