"""The trace base class and the arithmetic on scores and traces that traces share.

Every trace is a dataclass registered with :func:`trace_dataclass` (``gf`` static, every other
field data), so traces pass through ``jax.jit``, ``vmap`` and ``scan``. :class:`Trace` gives the
trace protocol every trace implements (``get_gen_fn``, ``get_args``, ``get_retval``,
``get_score``, ``get_choices``, ``get_scores``, ``get_subtrace``, ``project``, ``site_score``,
``batch_axes``, ``select``); inference code uses only these, never the field names.

Examples:
    >>> import jax, ppl
    >>> tr = ppl.normal.simulate(jax.random.key(0), 0.0, 1.0)
    >>> isinstance(tr, Trace), tr.get_gen_fn() is ppl.normal
    (True, True)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .arguments import unpack_args
from .choicemap import ChoiceMap, Selection
from .errors import AddressError, ModelError, fmt_addr

__all__ = ["Trace", "trace_dataclass", "choice_paths", "masked_total", "tree_select", "add", "zero"]


class Trace:
    """Base class of traces: ``gf``, ``args``, ``retval``, ``score`` and ``choices``.

    Traces nested inside another trace are stored without their ``args`` and ``retval`` (the parent
    re-executes its children when it needs them), so compiled programs carry only choices and
    scores.
    """

    def get_choices(self) -> ChoiceMap:
        raise NotImplementedError

    def get_scores(self) -> ChoiceMap:
        """Per-site log densities, as a :class:`ChoiceMap` with the structure of ``choices``.

        Each leaf is the log density of the choice at that address given its parents in this
        trace (summed over the site's own batch dimensions; combinators' copy and time axes stay
        as leading axes). Conditionally present sites (untaken branches) are ``Masked``.

        Examples:
            >>> import jax, ppl
            >>> @ppl.gen
            ... def m():
            ...     x = ppl.normal(0.0, 1.0) @ "x"
            ...     return ppl.normal(x, 1.0) @ "y"
            >>> tr = m.simulate(jax.random.key(0))
            >>> bool(abs(tr.get_scores()["x"] + tr.get_scores()["y"] - tr.score) < 1e-5)
            True
        """
        raise NotImplementedError

    def project(self, selection: Selection):
        """The log density of the selected choices: the sum of :meth:`get_scores` over them.

        Examples:
            >>> import jax, ppl
            >>> @ppl.gen
            ... def m():
            ...     x = ppl.normal(0.0, 1.0) @ "x"
            ...     return ppl.normal(x, 1.0) @ "y"
            >>> tr = m.simulate(jax.random.key(0))
            >>> bool(abs(tr.project(ppl.select("x")) - tr.get_scores()["x"]) < 1e-6)
            True
        """
        return masked_total(self.get_scores().filter(selection).leaves())

    @property
    def choices(self) -> ChoiceMap:
        return self.get_choices()

    @property
    def args(self):
        return unpack_args(self.packed_args)

    def get_subtrace(self, addr):
        raise AddressError(f"{type(self).__name__} has no subtrace at {fmt_addr(addr)}")

    # -- the trace protocol: what inference code may ask of any trace ---------------------------
    def get_gen_fn(self):
        """The generative function that produced this trace.

        Examples:
            >>> import jax, ppl
            >>> ppl.normal.simulate(jax.random.key(0), 0.0, 1.0).get_gen_fn() is ppl.normal
            True
        """
        return self.gf

    def get_args(self):
        """The model arguments of the call, as a tuple (``None`` for a trace stored inside another
        trace: nested traces are kept without their arguments).

        Examples:
            >>> import jax, ppl
            >>> [float(a) for a in ppl.normal.simulate(jax.random.key(0), 0.0, 2.0).get_args()]
            [0.0, 2.0]
        """
        return self.args

    def get_retval(self):
        """The return value of the call (``None`` for a nested ``@gen`` trace, see :meth:`get_args`).

        Examples:
            >>> import jax, ppl
            >>> tr = ppl.normal.simulate(jax.random.key(0), 0.0, 1.0)
            >>> bool(tr.get_retval() == tr.choices[()])
            True
        """
        return self.retval

    def get_score(self):
        """``log p(choices; args)``: the joint log density of all choices of this trace.

        Examples:
            >>> import jax, ppl
            >>> tr = ppl.normal.simulate(jax.random.key(0), 0.0, 1.0)
            >>> bool(tr.get_score() == tr.score)
            True
        """
        return self.score

    def site_score(self, path):
        """The summed log density of the site at ``path`` (an address or a tuple of addresses),
        over all its copies (combinators' copy and time axes are summed; a site in an untaken
        branch counts 0). A path naming a sub-model sums every site below it. ``None`` when the
        trace has no site at ``path``.

        Examples:
            >>> import jax, ppl
            >>> @ppl.gen
            ... def m():
            ...     x = ppl.normal(0.0, 1.0) @ "x"
            ...     return ppl.normal.repeat(3)(x, 1.0) @ "ys"
            >>> tr = m.simulate(jax.random.key(0))
            >>> bool(abs(tr.site_score("ys") - tr.get_scores()["ys"].sum()) < 1e-5)
            True
            >>> tr.site_score("zz") is None
            True
        """
        from .choicemap import normalize_addr

        path = () if path == () else normalize_addr(path)
        sub = self.get_scores().get_submap(path)
        if sub.is_empty():
            return None
        return masked_total([(path + p, v) for p, v in sub.leaves()])

    def batch_axes(self, axis=0):
        """A pytree prefix of this trace for ``jax.vmap``'s ``in_axes``/``out_axes``: ``axis`` for the
        per-trace data (choices, scores, return value), ``None`` for the model's arguments, which
        a batch of traces (chains, particles) shares.

        Examples:
            >>> import jax, jax.numpy as jnp, ppl
            >>> @ppl.gen
            ... def m(mu):
            ...     return ppl.normal(mu, 1.0) @ "x"
            >>> tr = m.simulate(jax.random.key(0), jnp.array(0.5))
            >>> batch = jax.vmap(lambda k: m.simulate(k, jnp.array(0.5)), out_axes=tr.batch_axes(0))(
            ...     jax.random.split(jax.random.key(1), 4))
            >>> batch.choices["x"].shape, batch.get_args()[0].shape
            ((4,), ())
        """
        if not dataclasses.is_dataclass(self):
            return axis
        fields = {f.name: (None if f.name == "packed_args" else axis)
                  for f in dataclasses.fields(self) if f.name != "gf"}
        return dataclasses.replace(self, **fields)

    def select(self, pred, other):
        """This trace where the scalar bool ``pred`` holds, else ``other`` (elementwise ``where`` over
        the per-trace data), keeping ``other``'s model arguments: an MH accept/reject step that
        leaves the shared arguments as they are. Both traces must have the same structure.

        Examples:
            >>> import jax, jax.numpy as jnp, ppl
            >>> @ppl.gen
            ... def m():
            ...     return ppl.normal(0.0, 1.0) @ "x"
            >>> a, b = m.simulate(jax.random.key(0)), m.simulate(jax.random.key(1))
            >>> bool(a.select(jnp.array(False), b).choices["x"] == b.choices["x"])
            True
        """
        if dataclasses.is_dataclass(self) and isinstance(other, Trace) and dataclasses.is_dataclass(other):
            fields = {f.name: tree_select(pred, getattr(self, f.name), getattr(other, f.name))
                      for f in dataclasses.fields(self) if f.name not in ("gf", "packed_args")}
            return dataclasses.replace(other, **fields)
        return tree_select(pred, self, other)

    def strip(self):
        return dataclasses.replace(self, packed_args=None, retval=None)

    def __repr__(self):
        name = getattr(self.gf, "name", type(self.gf).__name__)
        score = self.score
        if isinstance(score, jax.core.Tracer):
            s = f"<traced {jnp.dtype(score.dtype).name}{list(score.shape)}>"
        elif np.ndim(score) == 0:
            s = f"{float(score):.4f}"
        else:  # a batch of traces (vmapped)
            s = f"{jnp.result_type(score).name}{list(np.shape(score))}"
        body = repr(self.choices).split("\n", 1)
        tree = body[1] if len(body) > 1 else "(no choices)"
        return f"Trace of {name} (score={s})\n{tree}"


def trace_dataclass(cls):
    """Register a trace dataclass as a pytree; ``gf`` is static, other fields are data."""
    cls = dataclasses.dataclass(cls, repr=False, eq=False)
    fields = [f.name for f in dataclasses.fields(cls)]
    data = [f for f in fields if f != "gf"]
    jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=["gf"])
    return cls


def choice_paths(trace_or_choices):
    """Every address path of a trace's choices (or of a choice map), including the choices of
    branches not taken (``Masked``), as tuples; None if they cannot be listed.

    Examples:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def m():
        ...     return ppl.normal(0.0, 1.0) @ "x"
        >>> choice_paths(m.simulate(jax.random.key(0)))
        [('x',)]
    """
    try:  # abstractly, so that every branch's (masked) choices are listed, taken or not
        if isinstance(trace_or_choices, ChoiceMap):
            choices = trace_or_choices
        else:
            choices = jax.eval_shape(lambda t: t.get_choices(), trace_or_choices)
        return [p for p, _ in choices.leaves()]
    except Exception:
        return None


def add(a, b):
    """Add log weights, keeping Python 0.0 out of traced programs where possible."""
    if isinstance(a, float) and a == 0.0:
        return b
    if isinstance(b, float) and b == 0.0:
        return a
    return a + b


def zero():
    """A float32 scalar 0 (a log weight)."""
    return jnp.zeros((), dtype=jnp.float32)


def masked_total(leaves, extra_flags=None):
    """Sum of score leaves ``[(path, score_or_Masked)]``; a ``Masked`` leaf counts where present.

    ``extra_flags`` optionally maps a path to one more presence flag (broadcast on the left)."""
    from .choicemap import Masked

    total = 0.0
    for path, v in leaves:
        flag = None
        if isinstance(v, Masked):
            v, flag = v.value, v.flag
        if extra_flags is not None and path in extra_flags:
            f2 = extra_flags[path]
            flag = f2 if flag is None else jnp.logical_and(_prefix_bcast(flag, f2), _prefix_bcast(f2, flag))
        v = jnp.asarray(v)
        if flag is not None:
            flag = jnp.asarray(flag)
            if flag.ndim > v.ndim:
                raise ModelError(
                    f"internal: the presence mask at {fmt_addr(path)} is finer than the site's score; "
                    "partially masked sites cannot be scored separately."
                )
            v = jnp.where(jnp.reshape(flag, flag.shape + (1,) * (v.ndim - flag.ndim)), v, 0.0)
        total = add(total, jnp.sum(v))
    return total if not isinstance(total, float) else zero()


def _prefix_bcast(a, like):
    a, like = jnp.asarray(a), jnp.asarray(like)
    if a.ndim >= like.ndim:
        return a
    return jnp.reshape(a, a.shape + (1,) * (like.ndim - a.ndim))


def tree_select(pred, on_true, on_false):
    """Elementwise ``where`` over two pytrees of identical structure (pred broadcast on the left)."""

    pred_shape = jnp.shape(pred)
    is_bool = jnp.result_type(pred) == jnp.bool_

    def sel(a, b):
        if a is b:  # the same value on both sides (e.g. an observed choice): nothing to select
            return a
        a, b = jnp.asarray(a), jnp.asarray(b)
        if is_bool and a.shape == b.shape and a.dtype == b.dtype and a.shape[: len(pred_shape)] == pred_shape:
            # one select op (jnp.where would add a nested call, a reshape and casts per leaf)
            p = pred if a.shape == pred_shape else jax.lax.broadcast_in_dim(pred, a.shape, range(len(pred_shape)))
            return jax.lax.select(p, a, b)
        p = jnp.reshape(pred, pred_shape + (1,) * (a.ndim - len(pred_shape)))
        return jnp.where(p, a, b)

    return jax.tree_util.tree_map(sel, on_true, on_false)
