"""Gradient-based kernels: MALA and HMC on the selected continuous choices.

Both move the selected choices in unconstrained space (see :mod:`inference.mcmc.transforms`):
each site, scalar, vector or matrix, is one leaf of a pytree ``u`` and gets its own momentum or
noise per coordinate. Gradients are taken through the model's ``update``. With
``adapt_step_size=True`` the step size is tuned by dual averaging during the runner's burn-in
(target acceptance 0.8 for HMC, 0.574 for MALA) and then frozen.

Each step's info is an :class:`inference.mcmc.infos.HMCInfo` (``acceptance_rate``, ``accepted``,
``step_size``, ``diverging``); ``diverging`` means the proposal's energy error (minus the log
acceptance ratio) exceeded :data:`DIVERGENCE_THRESHOLD` (1000, as in NumPyro and Stan) or was not
finite, the sign of a step size far too large for the posterior's curvature (``mcmc.run`` warns
about them).

Examples:
    >>> import jax, jax.numpy as jnp, ppl
    >>> from inference import mcmc
    >>> @ppl.gen
    ... def model():
    ...     return ppl.normal(jnp.zeros(2), 1.0) @ "x"
    >>> tr = model.simulate(jax.random.key(0))
    >>> res = mcmc.run(jax.random.key(1), mcmc.hmc(ppl.select("x"), 0.5, 5), tr, 200)
    >>> res.choices["x"].shape
    (1, 200, 2)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from numpyro.infer.hmc_util import dual_averaging

from ppl.choicemap import Selection

from .base import Kernel, accept, as_selection, cast_like, selected_paths
from .infos import HMCInfo
from .transforms import UnconstrainedView, unravel_like

__all__ = ["hmc", "mala", "HMC", "MALA", "GradState", "UnconstrainedKernel", "DIVERGENCE_THRESHOLD"]

_tmap = jax.tree_util.tree_map

#: A transition diverges when its energy error ``-log(acceptance ratio)`` exceeds this (or is
#: not finite): NumPyro's and Stan's threshold.
DIVERGENCE_THRESHOLD = 1000.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class GradState:
    """State of MALA/HMC: step counter, log step size, dual-averaging state and the cached
    position (unconstrained values as one flat vector, log density and its gradient) of the
    current trace."""

    i: Any
    log_step: Any
    da: Any
    u: Any
    logp: Any
    grad: Any
    n_warmup: int = dataclasses.field(metadata=dict(static=True), default=0)


class UnconstrainedKernel(Kernel):
    """Base of the Metropolis-Hastings kernels that move the selected continuous choices in
    unconstrained space with one step size, adapted by dual averaging during burn-in toward
    ``target_accept`` (``hmc``, ``mala``, ``rw``). A subclass defines ``_propose(key, vg, u, lp,
    g, eps) -> (u2, lp2, g2, log_q)`` (``vg(u) -> (log density, gradient)``, ``log_q`` the proposal's
    log ratio ``log q(u | u2) - log q(u2 | u)``) and may override ``_value_and_grad`` and ``_info``.
    A subclass that sets ``_carries_trace = True`` (``mala``) gets ``lp`` and ``vg``'s
    first output as pairs ``(log density, trace at that position)`` that it only passes along,
    so that the accepted trace needs no extra run of the model.

    Examples:
        >>> import ppl
        >>> from inference import mcmc
        >>> isinstance(mcmc.hmc(ppl.select("x")), UnconstrainedKernel)
        True
    """

    target_accept = 0.8

    def moves(self, trace):
        """The kernel moves the selected choices only."""
        return self._selection(trace)

    def _selection(self, trace):
        return self.selection

    def _view(self, trace):
        paths = selected_paths(trace, self._selection(trace), f"mcmc.{self.name}", continuous=True)
        return UnconstrainedView(trace.get_gen_fn(), paths, f"mcmc.{self.name}")

    @staticmethod
    def _info(mh, eps, diverging):
        return HMCInfo(mh.acceptance_rate, mh.accepted, eps, diverging)

    #: whether ``_propose`` carries the trace at each position along with its log density (see
    #: ``step``): the proposal's trace then comes out of its last gradient evaluation, which ran the
    #: model there, instead of from one more run of the model (a smaller program)
    _carries_trace = False

    @staticmethod
    def _value_and_grad(view, trace, u, unravel):
        # one flat vector for all selected sites: the integrator's arithmetic is a few vector ops
        return jax.value_and_grad(lambda v: view.log_density(trace, unravel(v)))(u)

    @staticmethod
    def _value_and_grad_trace(view, trace, u, unravel):
        """``((log density, trace at u), gradient)``: :meth:`_value_and_grad` with the trace the
        model's update wrote at ``u`` (its leaves cast to ``trace``'s types)."""
        def f(v):
            new, lp = view.write(trace, unravel(v))
            return lp, new

        (lp, new), g = jax.value_and_grad(f, has_aux=True)(u)
        return (lp, cast_like(new, trace)), g

    def _read(self, view, trace):
        tree = view.read(trace)  # (also caches the shapes the steps that follow need)
        return ravel_pytree(tree)[0], unravel_like(tree)

    def init(self, key, trace, n_warmup=0):
        view = self._view(trace)
        u, _ = self._read(view, trace)
        lp, g = _staged_vg(self, trace, u)
        da_init, _ = dual_averaging()
        log_step = jnp.log(jnp.asarray(self.step_size, jnp.float32))
        da = da_init(jnp.log(10.0) + log_step)
        n = n_warmup if self.adapt_step_size else 0
        return GradState(jnp.zeros((), jnp.int32), log_step, da, u, lp, g, n)

    def _adapt(self, state, accept_prob):
        if state.n_warmup == 0:
            return state.log_step, state.da
        _, da_update = dual_averaging()
        warm = state.i < state.n_warmup
        da_new = da_update(self.target_accept - accept_prob, state.da)
        log_step = jnp.where(warm, da_new[0], state.log_step)
        last = state.i == state.n_warmup - 1
        log_step = jnp.where(last, da_new[1], log_step)
        da = _tmap(lambda a, b: jnp.where(warm, a, b), da_new, state.da)
        return log_step, da

    def _unravel(self, view, trace):
        """``flat vector -> {path: unconstrained value}`` for traces shaped like ``trace`` (the
        unconstrained shapes need one abstract pass of the model: cached per trace structure)."""
        return unravel_like(view.read_shapes(trace)[0])

    def step(self, key, trace, state, synced=False):
        view = self._view(trace)
        if synced:
            u, lp, g = state.u, state.logp, state.grad
        else:
            u, _ = self._read(view, trace)
            lp, g = _staged_vg(self, trace, u)
        eps = jnp.exp(state.log_step)
        k1, k2 = jax.random.split(key)
        if self._carries_trace:
            # "log density" = (log density, trace at the position): the proposal's trace is the one
            # its last gradient evaluation wrote
            unravel = self._unravel(view, trace)
            vg = lambda v: self._value_and_grad_trace(view, trace, v, unravel)  # noqa: E731
            u2, (lp2, new_trace), g2, log_q = self._propose(k1, vg, u, (lp, trace), g, eps)
        else:
            vg = lambda v: _staged_vg(self, trace, v)  # noqa: E731
            u2, lp2, g2, log_q = self._propose(k1, vg, u, lp, g, eps)
            new_trace = _staged_realize(self, trace, u2)
        return self._accept(k2, state, (u, lp, g), (u2, lp2, g2), log_q, eps, new_trace, trace)

    def _accept(self, key, state, pos, pos2, log_q, eps, new_trace, trace):
        """``(trace, state, info)`` after the Metropolis-Hastings test of ``pos2 = (u2, lp2, g2)``
        against ``pos = (u, lp, g)`` (``new_trace``/``trace``: the traces at them, or positions)."""
        (u, lp, g), (u2, lp2, g2) = pos, pos2
        log_alpha = lp2 - lp + log_q
        diverging = jnp.logical_not(jnp.isfinite(log_alpha)) | (-log_alpha > DIVERGENCE_THRESHOLD)
        out, mh = accept(key, log_alpha, new_trace, trace)
        acc = mh.accepted
        pick = lambda a, b: _tmap(lambda x, y: jnp.where(acc, x, y), a, b)  # noqa: E731
        log_step, da = self._adapt(state, mh.acceptance_rate)
        info = self._info(mh, eps, diverging)
        new_state = GradState(state.i + 1, log_step, da, pick(u2, u), jnp.where(acc, lp2, lp), pick(g2, g),
                              state.n_warmup)
        return out, new_state, info

    # --------------------------------------------------------- the runner's position protocol
    #: ``mcmc.run`` may hold the trace fixed and move the position in the state only (see
    #: :meth:`position_step`, :meth:`realize` and :mod:`inference.mcmc.base`)
    positional = True

    def position_step(self, key, template, state):
        """One transition of the position held in ``state`` (unconstrained values, log density
        and gradient): ``(state, info)``, the same random numbers and arithmetic as
        ``step(key, trace, state, synced=True)`` for the trace at that position. ``template`` is
        any trace of the model with the current unselected choices and arguments (its selected
        values are not read). No trace is written: :meth:`realize` writes one when needed.

        Examples:
            >>> import jax, jax.numpy as jnp, ppl
            >>> @ppl.gen
            ... def model():
            ...     return ppl.normal(0.0, 1.0) @ "x"
            >>> tr = model.simulate(jax.random.key(0))
            >>> k = hmc(ppl.select("x"), 0.5, 3)
            >>> st = k.init(jax.random.key(1), tr)
            >>> st2, info = k.position_step(jax.random.key(2), tr, st)
            >>> tr2, _, _ = k.step(jax.random.key(2), tr, st, synced=True)
            >>> bool(k.realize(tr, st2).choices["x"] == tr2.choices["x"])
            True
        """
        u, lp, g = state.u, state.logp, state.grad
        eps = jnp.exp(state.log_step)
        k1, k2 = jax.random.split(key)
        vg = lambda v: _staged_vg(self, template, v)  # noqa: E731
        u2, lp2, g2, log_q = self._propose(k1, vg, u, lp, g, eps)
        _, new_state, info = self._accept(k2, state, (u, lp, g), (u2, lp2, g2), log_q, eps, u2, u)
        return new_state, info

    def position_choices(self, template, state):
        """``{path: value}`` of the selected choices at ``state``'s position, computed from the
        unconstrained values without running the model when every selected site's transform is
        constant (:func:`~inference.mcmc.transforms.constant_transform`); ``None`` otherwise (then
        :meth:`realize` writes the trace). ``mcmc.run`` stores draws with it.

        Examples:
            >>> import jax, ppl
            >>> @ppl.gen
            ... def model():
            ...     return ppl.gamma(2.0, 1.0) @ "s"
            >>> tr = model.simulate(jax.random.key(0))
            >>> k = hmc(ppl.select("s"))
            >>> st = k.init(jax.random.key(1), tr)
            >>> bool(abs(k.position_choices(tr, st)[("s",)] - tr.choices["s"]) < 1e-5)
            True
        """
        view = self._view(template)
        shapes, transforms = view.read_shapes(template)
        return view.constrained(transforms, template, unravel_like(shapes)(state.u))

    def realize(self, template, state):
        """The trace at ``state``'s position: ``template`` with the selected choices written from
        the unconstrained values (one run of the model's ``update``; leaves keep ``template``'s
        types).

        Examples:
            >>> import jax, ppl
            >>> @ppl.gen
            ... def model():
            ...     return ppl.gamma(2.0, 1.0) @ "s"
            >>> tr = model.simulate(jax.random.key(0))
            >>> k = hmc(ppl.select("s"))
            >>> tr2 = k.realize(tr, k.init(jax.random.key(1), tr))
            >>> bool(abs(tr2.choices["s"] - tr.choices["s"]) < 1e-5)
            True
        """
        return _staged_realize(self, template, state.u)


# The kernels' log density with its gradient, and the write of a position, as nested jitted
# functions: a program evaluates them at several places (the initial state, every leapfrog
# step; each draw's stored choices, the final trace) and JAX traces the model once for all of
# them (same kernel and argument types); XLA inlines the calls, so the compiled code is unchanged.
@jax.jit(static_argnums=0)
def _staged_vg(kernel, trace, u):
    view = kernel._view(trace)
    return kernel._value_and_grad(view, trace, u, kernel._unravel(view, trace))


@jax.jit(static_argnums=0)
def _staged_realize(kernel, template, u):
    view = kernel._view(template)
    return view.realize(template, kernel._unravel(view, template)(u))


@dataclasses.dataclass(frozen=True)
class HMC(UnconstrainedKernel):
    """Hamiltonian Monte Carlo with a fixed number of leapfrog steps (see :func:`hmc`)."""

    selection: Selection
    step_size: float = 0.1
    n_leapfrog: int = 10
    adapt_step_size: bool = False
    # (not _carries_trace: carrying every trace leaf through the leapfrog loop makes the program
    # larger for models with many sites, e.g. 31 scalar sites, than one more forward run)
    name = "hmc"

    def _propose(self, key, vg, u, lp, g, eps):
        p0 = jax.random.normal(key, u.shape, u.dtype)

        def leap(_, carry):
            u, p, lp, g = carry
            p = p + 0.5 * eps * g
            u = u + eps * p
            lp, g = vg(u)
            return u, p + 0.5 * eps * g, lp, g

        u2, p2, lp2, g2 = jax.lax.fori_loop(0, self.n_leapfrog, leap, (u, p0, lp, g))
        return u2, lp2, g2, 0.5 * jnp.sum(p0 * p0) - 0.5 * jnp.sum(p2 * p2)


@dataclasses.dataclass(frozen=True)
class MALA(UnconstrainedKernel):
    """Metropolis-adjusted Langevin algorithm (see :func:`mala`)."""

    selection: Selection
    step_size: float = 0.1
    adapt_step_size: bool = False
    name = "mala"
    target_accept = 0.574
    _carries_trace = True

    def _propose(self, key, vg, u, lp, g, eps):
        xi = jax.random.normal(key, u.shape, u.dtype)
        u2 = u + 0.5 * eps**2 * g + eps * xi
        lp2, g2 = vg(u2)

        def log_q(to, frm, g_frm):
            return -0.5 * jnp.sum((to - (frm + 0.5 * eps**2 * g_frm)) ** 2) / eps**2

        return u2, lp2, g2, log_q(u, u2, g2) - log_q(u2, u, g)


def hmc(selection, step_size: float = 0.1, n_leapfrog: int = 10, adapt_step_size: bool = False) -> HMC:
    """Hamiltonian Monte Carlo on the selected continuous choices (unconstrained space, unit mass).

    ``adapt_step_size=True`` tunes the step size by dual averaging during ``mcmc.run``'s burn-in.
    Discrete or branch-local selected choices raise a :class:`ppl.ModelError` naming the site.

    Examples:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def model():
        ...     return ppl.gamma(2.0, 1.0) @ "s"
        >>> tr = model.simulate(jax.random.key(0))
        >>> tr2, info = hmc(ppl.select("s"), 0.3, 5)(jax.random.key(1), tr)
        >>> bool(tr2.choices["s"] > 0)
        True
    """
    return HMC(as_selection(selection), float(step_size), int(n_leapfrog), bool(adapt_step_size))


def mala(selection, step_size: float = 0.1, adapt_step_size: bool = False) -> MALA:
    """Metropolis-adjusted Langevin on the selected continuous choices (unconstrained space).

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> @ppl.gen
        ... def model():
        ...     return ppl.beta(2.0, 2.0) @ "p"
        >>> tr = model.simulate(jax.random.key(0))
        >>> tr2, info = mala(ppl.select("p"), 0.5)(jax.random.key(1), tr)
        >>> bool((tr2.choices["p"] > 0) & (tr2.choices["p"] < 1))
        True
    """
    return MALA(as_selection(selection), float(step_size), bool(adapt_step_size))
