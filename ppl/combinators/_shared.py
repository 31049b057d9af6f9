"""Pieces shared by the combinators (internal): the trace of stacked copies/steps, pending calls
with a leading argument, shape checks."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ..choicemap import ChoiceMap, Masked
from ..core import GenerativeFunction, Invocation, Trace, current_path, trace_dataclass
from ..errors import ShapeError, fmt_addr


def leading_check(chm: ChoiceMap, n: int, what: str) -> ChoiceMap:
    """``chm`` ready to be mapped over ``n`` copies/steps: raise a :class:`ppl.ShapeError` unless every
    value (and mask) has leading axis ``n``. A masked value whose one flag covers the whole value
    (a scalar flag, e.g. the choices of a branch not known to be taken) gets that flag repeated
    along the leading axis, so each copy/step sees it."""
    leaves, changed = [], False
    for path, v in chm.leaves():
        if isinstance(v, Masked) and jnp.ndim(v.flag) == 0 and jnp.ndim(v.value) > 0 and jnp.shape(v.value)[0] == n:
            v, changed = Masked(v.value, jnp.broadcast_to(v.flag, (n,))), True
        leaves.append((path, v))
        vals = [v.value, v.flag] if isinstance(v, Masked) else [v]
        for arr in vals:
            shape = jnp.shape(arr)
            if not shape or shape[0] != n:
                raise ShapeError(
                    f"{what}: the value at {fmt_addr(current_path() + path)} has shape {tuple(shape)}, "
                    f"but this combinator has {n} copies/steps: every value under it needs a leading "
                    f"axis of size {n} (stack the per-copy values)."
                )
    return ChoiceMap.from_leaves(leaves) if changed else chm


def zeros_like_struct(tree):
    """Zeros shaped like a pytree of ``jax.ShapeDtypeStruct``."""
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), tree)


def total(x):
    """The sum of a score array (per-copy or per-step scores to the call's score)."""
    return jnp.sum(x)


def check_gfs(gfs, what):
    for g in gfs:
        if not isinstance(g, GenerativeFunction):
            raise TypeError(f"{what}: every branch must be a generative function, got {g!r}")


@trace_dataclass
class StackedTrace(Trace):
    """A trace of copies of one generative function stacked along a leading axis: ``inner`` is
    the inner function's (stripped) trace with that axis on every leaf. Its choices and scores
    are the inner trace's. :class:`VmapTrace` (independent copies) and :class:`ScanTrace` (time
    steps) are its two kinds."""

    gf: Any
    packed_args: Any
    retval: Any
    score: Any
    inner: Any

    def get_choices(self):
        return self.inner.get_choices()

    def get_scores(self):
        return self.inner.get_scores()


class LeadingArgCall:
    """``combinator(first, *gfs)``: calling it with ``*args`` gives the pending call
    ``gf(first, *args)`` (traced into the model with ``@ "addr"``)."""

    def __init__(self, gf: GenerativeFunction, first):
        self.gf = gf
        self.first = first

    def __call__(self, *args):
        return Invocation(self.gf, (self.first, *args))
