"""Particle marginal Metropolis-Hastings (PMMH): MH over static parameters with the particle filter's
evidence estimate in place of the likelihood (a pseudo-marginal method: the chain targets the exact
posterior ``p(theta | y)`` because Z-hat is unbiased).

The parameters are the choices of a ``prior`` generative function; ``args_fn(prior_retval)`` builds
the state-space model's arguments ``(init_carry, xs)`` from the prior's return value.

**Proposal.** A symmetric Gaussian random walk: every floating-point choice of the prior moves by
``step_size * N(0, 1)`` (the same scale for all of them, in the prior's own parameterization;
integer choices stay fixed). A proposal outside the prior's support has prior log density
``-inf`` and is rejected. Sample constrained parameters on an unconstrained scale in the prior
(e.g. ``log_sigma = ppl.normal(...)`` and ``sigma = exp(log_sigma)``) so that the walk is
efficient. **Choosing the scale and particle count**: pick ``n_particles`` so that the standard
deviation of log Z-hat at a typical parameter value is about 1 to 1.5 (check it with repeated
:func:`~inference.smc.particle_filter` runs); then take ``step_size`` about
``2.38 / sqrt(d)`` times the posterior standard deviation of the parameters (``d`` of them; from a
pilot run), which gives acceptance rates of roughly 10-30% for a pseudo-marginal chain. Much
lower acceptance means a too large step or too noisy log Z-hat (more particles); much higher, a
too small step. ``burn_in`` steps are dropped and every ``thin``-th of the following
``n_samples * thin`` steps is kept.

With ``n_chains`` the function runs that many independent chains (vmapped, one compiled program)
and returns a :class:`PMMHChains`, an :class:`inference.mcmc.MCMCResult` (``choices`` with leaves
``(n_chains, n_samples, ...)``, ``acceptance_rate()``, ``summary()``, ``to_arviz()``) with the log
Z-hat of every draw in ``log_z``.

See :func:`pmmh` for an example.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ppl.choicemap import ChoiceMap

from .._fnkey import call_with_fns
from ..mcmc import MCMCResult
from ..mcmc.base import accept
from ..mcmc.infos import MHInfo
from ..mcmc.runner import DrawMap
from ._util import as_choicemap, staged
from .filters import check_ssm, run_filter
from .resampling import DEFAULT_RESAMPLING, check_resampling

__all__ = ["PMMHResult", "PMMHChains", "pmmh", "random_walk"]


@dataclasses.dataclass(eq=False)
class PMMHResult:
    """PMMH chain: ``samples`` (the prior's choices, leaves ``(n_samples, ...)``), ``accepted``
    flags, ``log_z`` (the evidence estimate attached to each state) and the method
    :meth:`acceptance_rate` (as on MCMC results)."""

    samples: Any
    accepted: Any
    log_z: Any

    def acceptance_rate(self):
        """Fraction of the kept MH steps that were accepted (a scalar array).

        A method, as :meth:`inference.mcmc.MCMCResult.acceptance_rate` (it was a property).

        Example:
            >>> import jax.numpy as jnp
            >>> float(PMMHResult(None, jnp.array([True, False, True, True]), jnp.zeros(4)).acceptance_rate())
            0.75
        """
        return jnp.mean(self.accepted.astype(jnp.float32))


jax.tree_util.register_dataclass(PMMHResult, data_fields=["samples", "accepted", "log_z"], meta_fields=[])


@dataclasses.dataclass
class PMMHChains(MCMCResult):
    """Multi-chain PMMH (``smc.pmmh(..., n_chains=C)``): an :class:`inference.mcmc.MCMCResult`
    whose ``choices`` are the prior's choices, leaves ``(C, n_samples, ...)``, ``info`` an
    :class:`~inference.mcmc.infos.MHInfo` per draw, ``final_trace`` the chains' last choices
    (a ChoiceMap, leaves ``(C, ...)``; there is no model trace) and ``log_z`` ``(C, n_samples)``
    the evidence estimate attached to each draw. ``acceptance_rate()`` is per chain;
    ``summary()`` and ``to_arviz()`` as for ``mcmc.run``.
    """

    log_z: Any = None


jax.tree_util.register_dataclass(PMMHChains)


def random_walk(key, choices, step_size):
    """Add ``step_size * N(0, 1)`` noise to every floating-point leaf of a choice map
    (:func:`inference.mcmc.rw_proposal` with one scale).

    Example:
        >>> import jax, ppl
        >>> ch = random_walk(jax.random.key(0), ppl.ChoiceMap({"a": 1.0, "n": 3}), 0.1)
        >>> int(ch["n"]), bool(ch["a"] != 1.0)
        (3, True)
    """
    from ..mcmc.rw import rw_proposal  # the library's one random-walk proposal

    return rw_proposal(key, choices, step_size)


def _pmmh_chain(key, prior, model, args_fn, observations, n_particles, n_samples, step_size, init, resampling, burn_in,
          thin):
    check_ssm(model, "smc.pmmh")
    k0, k1, k_chain = jax.random.split(key, 3)
    ch0 = prior.simulate(k0).choices if init is None else init

    def log_target(k, ch):
        lp, rv = prior.assess(ch)
        res = run_filter(k, model, tuple(args_fn(rv)), observations, n_particles, None, resampling, 1.0, False)
        lz = jnp.where(jnp.isfinite(lp), res.log_z, -jnp.inf)
        return lp, lz

    lp0, lz0 = log_target(k1, ch0)

    def body(state, k):
        ch, lp, lz = state
        kp, kf, ku = jax.random.split(k, 3)
        new = random_walk(kp, ch, step_size)
        lp_new, lz_new = log_target(kf, new)
        log_alpha = lp_new + lz_new - lp - lz
        state, info = accept(ku, log_alpha, (new, lp_new, lz_new), (ch, lp, lz))
        return state, (state[0], info, state[2])

    n_total = burn_in + n_samples * thin
    (last, _, _), (chs, info, lzs) = jax.lax.scan(body, (ch0, lp0, lz0), jax.random.split(k_chain, n_total))
    keep = lambda x: x[burn_in:][thin - 1 :: thin]  # noqa: E731
    return jax.tree_util.tree_map(keep, chs), jax.tree_util.tree_map(keep, info), keep(lzs), last


def _pmmh(key, prior, model, args_fn, args_fn_data, observations, n_particles, n_samples, step_size, init,
          resampling, burn_in, thin, n_chains):
    args_fn = args_fn.rebuild(args_fn_data)  # a FnSpec: the arrays args_fn closes over are data
    args = (prior, model, args_fn, observations, n_particles, n_samples, step_size, init, resampling, burn_in, thin)
    if n_chains is None:
        chs, info, lzs, _ = _pmmh_chain(key, *args)
        return PMMHResult(chs, info.accepted, lzs)
    chs, info, lzs, last = jax.vmap(lambda k: _pmmh_chain(k, *args))(jax.random.split(key, n_chains))
    return PMMHChains(DrawMap.wrap(chs), info, last, ChoiceMap.empty(), None, lzs)


_pmmh_staged = staged(("prior", "model", "args_fn", "n_particles", "n_samples", "resampling", "burn_in", "thin",
                       "n_chains"))(_pmmh)


def pmmh(key, prior, model, args_fn, observations, n_particles: int, n_samples: int, step_size=0.1, init=None,
         resampling: str = DEFAULT_RESAMPLING, burn_in: int = 0, thin: int = 1, n_chains: int | None = None):
    """Particle marginal Metropolis-Hastings over the choices of ``prior`` (see the module docs for
    the proposal and how to choose ``step_size`` and ``n_particles``).

    ``args_fn(prior_retval) -> (init_carry, xs)`` builds the ``ppl.scan`` model's arguments; every
    MH step runs a bootstrap particle filter with ``n_particles`` particles. ``step_size`` is the
    random-walk scale (a float; it is data, so changing it does not recompile). ``init`` is an
    optional starting ChoiceMap of the prior's choices. ``resampling`` is the particle filter's
    scheme (default ``"systematic"``). ``burn_in`` MH steps are discarded, then every ``thin``-th
    of ``n_samples * thin`` steps is kept. One ``lax.scan`` under ``jit``, compiled once per
    ``args_fn`` *code*: an inline ``lambda`` written anew at every call, or one closing over new
    arrays of the same shapes (they are passed to the program as data), reuses the compiled
    program; Python constants it holds (``0.0`` in ``lambda a: ((0.0, a), None)``) are part of
    the program.

    Without ``n_chains`` returns a :class:`PMMHResult` (one chain: ``samples`` leaves
    ``(n_samples, ...)``; ``out.acceptance_rate()`` the fraction of accepted moves). With
    ``n_chains=C`` runs ``C`` independent chains (each from ``init``, or its own prior draw) and
    returns a :class:`PMMHChains`, the result type of ``mcmc.run``: ``out.choices[addr]``
    ``(C, n_samples, ...)``, ``out.acceptance_rate()`` ``(C,)``, ``out.summary()`` (ArviZ: mean,
    sd, MCSE, ESS, R-hat), ``out.to_arviz()``, and ``out.log_z`` ``(C, n_samples)``.

    Example:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference import smc
        >>> @ppl.gen
        ... def step(carry, _):
        ...     x, a = carry
        ...     x = ppl.normal(a * x, 1.0) @ "x"
        ...     ppl.normal(x, 1.0) @ "y"
        ...     return (x, a), None
        >>> @ppl.gen
        ... def prior():
        ...     return ppl.normal(0.5, 0.5) @ "a"
        >>> obs = ppl.ChoiceMap({"y": jnp.sin(jnp.arange(10.0))})
        >>> out = smc.pmmh(jax.random.key(0), prior, ppl.scan(step, length=10), lambda a: ((0.0, a), None),
        ...                obs, n_particles=50, n_samples=30, step_size=0.2)
        >>> out.samples["a"].shape, out.log_z.shape, out.acceptance_rate().shape
        ((30,), (30,), ())
        >>> res = smc.pmmh(jax.random.key(1), prior, ppl.scan(step, length=10), lambda a: ((0.0, a), None),
        ...                obs, n_particles=50, n_samples=30, step_size=0.2, n_chains=2, burn_in=10)
        >>> res.choices["a"].shape, res.acceptance_rate().shape, res.log_z.shape
        ((2, 30), (2,), (2, 30))
    """
    options = dict(
        prior=prior, model=model, observations=as_choicemap(observations),
        n_particles=int(n_particles), n_samples=int(n_samples), step_size=jnp.asarray(step_size, jnp.float32),
        init=None if init is None else as_choicemap(init), resampling=check_resampling(resampling, "smc.pmmh"),
        burn_in=int(burn_in),
        thin=int(thin), n_chains=None if n_chains is None else _positive(n_chains, "n_chains"),
    )
    # args_fn is keyed on its code and constants, its closed-over arrays passed as data
    # (inference._fnkey): a new lambda with the same code, or new data of the same shapes, reuses the program
    return call_with_fns(lambda args_fn: _pmmh_staged(key, args_fn=args_fn[0], args_fn_data=args_fn[1], **options),
                         args_fn=args_fn)


def _positive(v, name):
    from ppl.errors import ModelError

    if int(v) != v or int(v) < 1:
        raise ModelError(f"smc.pmmh: {name} must be a positive integer, got {v!r}")
    return int(v)
