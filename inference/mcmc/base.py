"""The kernel protocol shared by every MCMC kernel and combinator.

A kernel is a frozen dataclass (hashable, so the runner compiles once per kernel and shapes)
with two pure functions over pytrees:

- ``init(key, trace, n_warmup) -> state``: the kernel's own state (adaptation, caches); ``()``
  for stateless kernels. ``n_warmup`` (a Python int) is the number of burn-in steps during which
  adaptive kernels adapt.
- ``step(key, trace, state, synced) -> (trace, state, info)``: one transition. ``synced`` says
  whether ``state`` was produced together with ``trace`` (no other kernel changed the trace in
  between), so cached densities and gradients may be reused.

- ``moves(trace) -> Selection | None`` (optional): the choices the kernel may change (a
  :class:`ppl.Selection` or a list of addresses), ``None`` when it cannot say. ``mcmc.run`` stores
  only those choices per draw (see :mod:`inference.mcmc.runner`); the built-in kernels and
  combinators all know theirs, a custom kernel that does not override ``moves`` has every choice
  stored except the observations given to ``mcmc.init_chains``.

- optional, the position protocol (``positional = True``): a kernel whose state holds the
  position it moves (``hmc``, ``mala``, ``rw``, ``nuts``: the selected sites' unconstrained values
  as one flat vector, with their log density and gradient) also defines
  ``position_step(key, template, state) -> (state, info)``, the same transition as ``step(key,
  trace, state, synced=True)`` without writing a trace (``template`` supplies the other choices
  and the arguments), and ``realize(template, state) -> trace``, the trace at the state's
  position; optionally ``position_choices(template, state) -> {path: value} | None``, the moved
  choices' values at the position without running the model (the gradient kernels: when every
  moved site's transform to its support is constant), which ``mcmc.run`` stores per draw
  instead of writing a trace (unless the model has deterministic sites). ``mcmc.run`` then keeps the starting trace fixed in its loops, writes only the
  stored choices of each draw, and realizes the final trace once: a smaller compiled program
  (the trace's leaves are not carried, selected and stored step by step). A rejected proposal's
  draw is the realized position, ``T(T^{-1}(x))``, equal to the previous value up to rounding for
  constrained sites (exactly, for real-valued sites).

Calling a kernel, ``kernel(key, trace) -> (trace, info)``, runs one transition from a fresh state
(no adaptation): that is the composable interface (``smc.rejuvenate`` takes any such function).

Examples:
    >>> import jax, ppl
    >>> from inference import mcmc
    >>> @ppl.gen
    ... def model():
    ...     return ppl.normal(0.0, 1.0) @ "x"
    >>> tr = model.simulate(jax.random.key(0))
    >>> tr2, info = mcmc.mh(ppl.select("x"))(jax.random.key(1), tr)
    >>> info._fields
    ('acceptance_rate', 'accepted')
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ppl.choicemap import Masked, Selection, select
from ppl.core import Trace, tree_select
from ppl.errors import AddressError, ModelError, fmt_addr

from .infos import MHInfo

__all__ = ["Kernel", "accept", "select_trace", "index_trace", "selected_paths", "check_selection", "as_selection", "map_batched"]


class Kernel:
    """Base class of MCMC kernels (see the module docstring for the protocol)."""

    name = "kernel"

    def init(self, key, trace, n_warmup: int = 0):
        """The kernel's initial state for ``trace`` (``()`` for stateless kernels)."""
        return ()

    def step(self, key, trace, state, synced: bool = False):
        """One transition: ``(trace, state, info)``."""
        raise NotImplementedError

    def moves(self, trace):
        """The choices of ``trace`` this kernel may change: a :class:`ppl.Selection`, a list of
        addresses, or ``None`` (unknown: the runner then stores every unobserved choice).

        Examples:
            >>> import ppl
            >>> from inference import mcmc
            >>> mcmc.hmc(ppl.select("x")).moves(None)
            select('x')
        """
        return None

    def __call__(self, key, trace):
        return _call(self, key, trace)


@jax.jit(static_argnums=0)
def _call(kernel, key, trace):
    k1, k2 = jax.random.split(key)
    state = kernel.init(k1, trace, 0)
    trace, _, info = kernel.step(k2, trace, state, True)
    return trace, info


def accept(key, log_alpha, new, old):
    """Metropolis-Hastings accept/reject between two traces of the same structure.

    Returns ``(trace, info)`` with ``info`` an :class:`inference.mcmc.infos.MHInfo`
    ``(acceptance_rate, accepted)``; a NaN ratio rejects. ``new`` and ``old`` are traces (the
    result keeps ``old``'s model arguments, see :meth:`ppl.core.Trace.select`) or any pytrees of
    the same structure. Every MH-type move of the library (``mh``, ``rw``, ``hmc``, ``involutive``,
    SMC's rejuvenation moves) accepts through this function.

    Examples:
        >>> import jax.numpy as jnp
        >>> tr, info = accept(jax.random.key(0), jnp.array(0.0), jnp.ones(2), jnp.zeros(2))
        >>> bool(info.accepted), tr.tolist()
        (True, [1.0, 1.0])
    """
    log_alpha = jnp.where(jnp.isnan(log_alpha), -jnp.inf, log_alpha)
    acc = jnp.log(jax.random.uniform(key)) < log_alpha
    out = select_trace(acc, new, old)
    return out, MHInfo(jnp.exp(jnp.minimum(log_alpha, 0.0)), acc)


def select_trace(pred, new, old):
    """``where(pred, new, old)`` over traces (or any pytrees); a trace keeps ``old``'s model
    arguments (:meth:`ppl.core.Trace.select`), so that chains vmapped over traces share one copy
    of the data.

    Examples:
        >>> import jax.numpy as jnp
        >>> select_trace(jnp.array(False), jnp.ones(2), jnp.zeros(2)).tolist()
        [0.0, 0.0]
    """
    if isinstance(new, Trace):
        return new.select(pred, old)
    return tree_select(pred, new, old)


def strong_types(tree):
    """``tree`` with weak-typed leaves (Python scalars promoted lazily by JAX) made strong, so that
    a loop carry keeps one type from its first iteration on.

    Examples:
        >>> import jax.numpy as jnp
        >>> strong_types({"x": jnp.asarray(1.0)})["x"].weak_type
        False
    """
    return jax.tree_util.tree_map(lambda x: jax.lax.convert_element_type(x, jnp.result_type(x)), tree)


def cast_like(new, like):
    """``new``'s leaves cast to the types of ``like``'s (same structure): a trace or state a kernel
    wrote can then replace ``like`` in a loop carry.

    Examples:
        >>> import jax.numpy as jnp
        >>> cast_like({"x": jnp.ones(2, jnp.int32)}, {"x": jnp.zeros(2)})["x"].dtype
        dtype('float32')
    """
    return jax.tree_util.tree_map(lambda a, b: jax.lax.convert_element_type(a, jnp.result_type(b)), new, like)


def index_trace(batched, j, like):
    """Entry ``j`` of a batch of traces whose per-trace data has a leading axis (see
    :meth:`ppl.core.Trace.batch_axes`); the model arguments are ``like``'s.

    Examples:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def m():
        ...     return ppl.normal(0.0, 1.0) @ "x"
        >>> tr = m.simulate(jax.random.key(0))
        >>> batch = jax.vmap(m.simulate, out_axes=tr.batch_axes(0))(jax.random.split(jax.random.key(1), 3))
        >>> bool(index_trace(batch, 2, tr).choices["x"] == batch.choices["x"][2])
        True
    """
    return map_batched(lambda x: x[j], batched, like)


def _is_none(x):
    return x is None


def map_batched(fn, batched, like):
    """``fn`` applied to every per-trace array of ``batched`` (a batch of traces laid out as
    ``like.batch_axes(0)`` says), with the model arguments taken from ``like`` (a trace of the
    same structure).

    Examples:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def m():
        ...     return ppl.normal(0.0, 1.0) @ "x"
        >>> tr = m.simulate(jax.random.key(0))
        >>> batch = jax.vmap(m.simulate, out_axes=tr.batch_axes(0))(jax.random.split(jax.random.key(1), 3))
        >>> map_batched(lambda x: x[:2], batch, tr).choices["x"].shape
        (2,)
    """
    return jax.tree_util.tree_map(
        lambda ax, b, l: l if ax is None else jax.tree_util.tree_map(fn, b),
        like.batch_axes(0), batched, like, is_leaf=_is_none)


def as_selection(selection) -> Selection:
    """A :class:`ppl.Selection` from a selection, an address or a list of addresses (the
    ``selection`` argument of the kernel constructors).

    Examples:
        >>> as_selection(["a", "b"])
        select('a', 'b')
    """
    if isinstance(selection, Selection):
        return selection
    return select(*selection) if isinstance(selection, list) else select(selection)


def _explicit_paths(sel: Selection):
    """Addresses named explicitly in a selection (for 'names no address' errors)."""
    return sel.named_paths()


def check_selection(trace, selection, who: str):
    """Raise an :class:`ppl.AddressError` if ``selection`` names an address absent from ``trace``."""
    if not isinstance(selection, Selection):
        raise TypeError(f"{who}: expected a ppl.Selection (ppl.select(...)), got {selection!r}")
    leaves = [p for p, _ in trace.choices.leaves()]
    for p in _explicit_paths(selection):
        if not any(q[: len(p)] == p for q in leaves):
            top = sorted({q[0] for q in leaves if q})
            raise AddressError(
                f"{who}: the selection names address {fmt_addr(p)}, but the model "
                f"{getattr(trace.get_gen_fn(), 'name', '')} has no choice there (its top-level addresses are "
                f"{top}); fix the spelling or the selection."
            )
    chosen = [(p, v) for p, v in trace.choices.leaves() if p and selection.contains(p)]
    if not chosen:
        raise AddressError(f"{who}: the selection {selection!r} selects no choice of the trace")
    return chosen


def selected_paths(trace, selection, who: str, continuous: bool = False):
    """Paths of the selected choices; with ``continuous`` check they are real-valued and present."""
    chosen = check_selection(trace, selection, who)
    if continuous:
        for p, v in chosen:
            if isinstance(v, Masked):
                raise ModelError(
                    f"{who}: the choice at {fmt_addr(p)} is conditionally present (inside a "
                    "ppl.cond/switch/mix branch); gradient-based kernels move choices that are "
                    "always present. Use mcmc.mh for it, or move the site out of the branch."
                )
            if not jnp.issubdtype(jnp.result_type(v), jnp.floating):
                raise ModelError(
                    f"{who}: the choice at {fmt_addr(p)} is discrete ({jnp.result_type(v).name}); "
                    "gradient-based kernels (mala, hmc, nuts) need continuous choices. Use "
                    "mcmc.gibbs or mcmc.mh for it and combine kernels with mcmc.cycle."
                )
    return tuple(p for p, _ in chosen)
