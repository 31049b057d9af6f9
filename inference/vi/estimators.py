"""Gradient-estimation strategies for the sampling sites of an expectation program.

A strategy says how the gradient of ``E[f]`` flows through one sampling site:

- :data:`reparam`: differentiate through the sampler (``v = loc + scale * eps``). Default for
  distributions with a reparameterized sampler (numpyro's ``has_rsample``).
- :func:`reinforce` (``baseline=None | float | "mean" | callable``): the score-function estimator
  ``(f - b) * grad log q(v)``, for the whole rest of the program. Default for all other sites.
- :data:`enum`: exact sum over a finite support, ``sum_v q(v) * E[f | v]``.
- :data:`mvd`: measure-valued derivative, ``c * (E[f | v+] - E[f | v-])`` per parameter, for
  normal, Bernoulli/flip and categorical sites.

Strategies are hashable frozen dataclasses, so they can be stored on a site
(``ppl.normal(mu, sigma, estimator=vi.reinforce()) @ "z"``). ``reparam``, ``enum``, ``mvd`` and
``reinforce`` may be used with or without parentheses.

Example:
    >>> from inference import vi
    >>> vi.reinforce(baseline="mean") == vi.reinforce(baseline="mean"), vi.enum() is vi.enum
    (True, True)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as nd

from ppl.errors import ModelError, fmt_addr

__all__ = ["Strategy", "Reparam", "Reinforce", "Enum", "MVD", "reparam", "reinforce", "enum", "mvd",
           "EstimatorError", "default_strategy", "check_applicable", "MAX_ENUM"]

#: the largest joint support an ``enum`` site may have (a site with n elements of k values each has
#: ``k ** n`` configurations, each a replay of the rest of the program)
MAX_ENUM = 4096


class EstimatorError(ModelError):
    """A gradient strategy cannot be used at a site (or the expectation program is malformed)."""


class Strategy:
    """Base class of gradient strategies; calling an instance with no arguments returns it."""

    name = "strategy"

    def __call__(self):
        return self

    def __repr__(self):
        return f"vi.{self.name}"


@dataclasses.dataclass(frozen=True, repr=False)
class Reparam(Strategy):
    """Pathwise (reparameterization) gradient through the sampler."""

    name = "reparam"


@dataclasses.dataclass(frozen=True, repr=False)
class Enum(Strategy):
    """Exact enumeration of a finite support (the rest of the program is replayed per value)."""

    name = "enum"


@dataclasses.dataclass(frozen=True, repr=False)
class MVD(Strategy):
    """Measure-valued derivative (normal, Bernoulli/flip, categorical)."""

    name = "mvd"


@dataclasses.dataclass(frozen=True, repr=False)
class Reinforce(Strategy):
    """Score-function gradient with an optional baseline (control variate).

    ``baseline``: ``None``; a number; ``"mean"`` (the rest of the program replayed with
    ``n_baseline`` fresh draws at this site, all other randomness unchanged: an estimate of the
    conditional mean that is independent of the site's own draw); or a callable
    ``baseline(params, *args) -> scalar`` of the expectation's own arguments (not differentiated).
    """

    baseline: Any = None
    n_baseline: int = 1
    name = "reinforce"

    def __call__(self, baseline=None, n_baseline: int = 1):
        if baseline is not None and not (callable(baseline) or baseline == "mean" or
                                         isinstance(baseline, (int, float))):
            raise EstimatorError(
                f"vi.reinforce(baseline={baseline!r}): a baseline is None, a number, \"mean\" or a "
                "callable baseline(params, *args) -> scalar")
        if not isinstance(n_baseline, int) or n_baseline < 1:
            raise EstimatorError(f"vi.reinforce: n_baseline must be a positive int, got {n_baseline!r}")
        return Reinforce(baseline, n_baseline)

    def __repr__(self):
        if self.baseline is None:
            return "vi.reinforce()"
        return f"vi.reinforce(baseline={self.baseline!r})"


reparam = Reparam()
enum = Enum()
mvd = MVD()
reinforce = Reinforce()


def as_strategy(s, where: str) -> Strategy:
    if isinstance(s, Strategy):
        return s
    raise EstimatorError(
        f"{where}: {s!r} is not a gradient strategy; use vi.reparam, vi.reinforce(...), vi.enum or vi.mvd")


def default_strategy(d) -> Strategy:
    """``reparam`` where numpyro has a reparameterized sampler, ``reinforce`` otherwise."""
    return reparam if getattr(d, "has_rsample", False) else reinforce


def _dname(gf, d):
    return f"{getattr(gf, 'name', '?')} ({type(d).__name__})"


def check_applicable(strategy: Strategy, path, gf, d):
    """Raise an :class:`EstimatorError` naming the site if ``strategy`` cannot be used for ``d``."""
    where = f"site {fmt_addr(path)}, {_dname(gf, d)}"
    if isinstance(strategy, Reparam) and not getattr(d, "has_rsample", False):
        raise EstimatorError(
            f"vi.reparam at {where}: this distribution has no reparameterized sampler (it is "
            "discrete or numpyro cannot differentiate its sampler); use vi.reinforce(), vi.enum "
            "(finite support) or vi.mvd")
    if isinstance(strategy, Enum):
        if not getattr(d, "has_enumerate_support", False):
            raise EstimatorError(
                f"vi.enum at {where}: the distribution has no finite support to enumerate; use "
                "vi.reparam, vi.reinforce() or vi.mvd")
        if tuple(d.event_shape) != ():
            raise EstimatorError(f"vi.enum at {where}: sites with an event shape cannot be enumerated")
        n = math.prod(d.batch_shape)
        k = d.enumerate_support(expand=False).shape[0]
        if k ** n > MAX_ENUM:
            raise EstimatorError(
                f"vi.enum at {where}: the site holds {n} values of {k} outcomes each, {k}**{n} joint "
                f"configurations (more than {MAX_ENUM}); use vi.mvd or vi.reinforce() for it, or "
                "split it into smaller sites")
    if isinstance(strategy, MVD) and _mvd_rule(d) is None:
        raise EstimatorError(
            f"vi.mvd at {where}: measure-valued derivatives are implemented for normal, "
            "Bernoulli/flip and categorical sites; use vi.reparam or vi.reinforce() here")


# ---------------------------------------------------------------------------------------- enum
def enum_configs(d):
    """All joint values of a site, stacked: shape ``(k ** n, *batch_shape)``."""
    support = d.enumerate_support(expand=False).reshape(-1)
    k = support.shape[0]
    shape = tuple(d.batch_shape)
    n = math.prod(shape)
    if n == 1:
        return support.reshape((k,) + shape)
    grids = jnp.stack(jnp.meshgrid(*([jnp.arange(k)] * n), indexing="ij"), -1).reshape(-1, n)
    return support[grids].reshape((-1,) + shape)


# ---------------------------------------------------------------------------------------- mvd
# A rule maps (d, v, key) to (idx, new, combine): replay the program once per request r with
# element idx[r] of the flattened site value replaced by new[r]; ``combine(vals, main)`` turns the
# replayed values (and the main run's value) into a surrogate term with value 0 whose gradient is
# the measure-valued derivative.

def _flat(x, shape):
    return jnp.broadcast_to(x, shape).reshape(-1)


def _mvd_normal(d, v, key):
    shape = tuple(d.batch_shape)
    n = max(1, math.prod(shape))
    loc, scale = _flat(d.loc, shape), _flat(d.scale, shape)
    sloc, sscale = jax.lax.stop_gradient(loc), jax.lax.stop_gradient(scale)
    k1, k2, k3 = jax.random.split(key, 3)
    rayleigh = jnp.sqrt(2.0 * jax.random.exponential(k1, (n,)))
    g = jax.random.normal(k2, (n, 3))
    maxwell = jnp.sqrt(jnp.sum(g * g, -1)) * jnp.where(jax.random.bernoulli(k3, 0.5, (n,)), 1.0, -1.0)
    eps = jax.random.normal(jax.random.fold_in(k3, 1), (n,))
    idx = jnp.tile(jnp.arange(n), 4)
    new = jnp.concatenate([sloc + sscale * rayleigh, sloc - sscale * rayleigh,
                           sloc + sscale * maxwell, sloc + sscale * eps])

    def combine(vals, main):
        vals = vals.reshape(4, n)
        c_loc = (vals[0] - vals[1]) / (sscale * math.sqrt(2 * math.pi))
        c_scale = (vals[2] - vals[3]) / sscale
        return jnp.sum((loc - sloc) * jax.lax.stop_gradient(c_loc)) + jnp.sum(
            (scale - sscale) * jax.lax.stop_gradient(c_scale))

    return idx, new.astype(v.dtype), combine


def _mvd_bernoulli(d, v, key):
    shape = tuple(d.batch_shape)
    n = max(1, math.prod(shape))
    p = _flat(d.probs, shape)
    idx = jnp.tile(jnp.arange(n), 2)
    new = jnp.concatenate([jnp.ones(n), jnp.zeros(n)]).astype(v.dtype)

    def combine(vals, main):
        vals = vals.reshape(2, n)
        return jnp.sum((p - jax.lax.stop_gradient(p)) * jax.lax.stop_gradient(vals[0] - vals[1]))

    return idx, new, combine


def _mvd_categorical(d, v, key):
    shape = tuple(d.batch_shape)
    n = max(1, math.prod(shape))
    probs = jnp.broadcast_to(d.probs, shape + d.probs.shape[-1:]).reshape(n, -1)
    k = probs.shape[-1]
    idx = jnp.repeat(jnp.arange(n), k)
    new = jnp.tile(jnp.arange(k), n).astype(v.dtype)

    def combine(vals, main):
        # d/dprobs_ik E[f] = E[f | v_i = k]; on the simplex a constant shift cancels, so subtract
        # the main run's value to keep the coefficients small
        vals = vals.reshape(n, k) - main
        return jnp.sum((probs - jax.lax.stop_gradient(probs)) * jax.lax.stop_gradient(vals))

    return idx, new, combine


def _mvd_rule(d):
    if isinstance(d, nd.Normal):
        return _mvd_normal
    if isinstance(d, (nd.BernoulliProbs, nd.BernoulliLogits)):
        return _mvd_bernoulli
    if isinstance(d, (nd.CategoricalProbs, nd.CategoricalLogits)):
        return _mvd_categorical
    return None


def mvd_requests(d, v, key):
    """``(idx, new_values, combine)`` for an MVD site (see the module source for the contract)."""
    return _mvd_rule(d)(d, v, key)
