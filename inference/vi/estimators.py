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

Writing a strategy: subclass :class:`Strategy` (a frozen dataclass) and implement the methods the
ADEV interpreter calls at every site that uses it; :class:`Site` is what they receive.

- ``check(site)``: raise :class:`EstimatorError` naming ``site.where`` if the strategy cannot be
  used for the distribution ``site.d`` (default: usable everywhere).
- ``sample(site) -> value`` (required): the value the program sees at the site. ``site.draw()``
  samples (differentiably where numpyro's sampler is); ``site.add_score_term(value, baseline)``
  adds the score-function term ``(f - b) * grad log q(value)`` covering the rest of the program;
  ``site.branch(value)`` (never returns) hands the site to ``expand``.
- ``expand(site, value, replay) -> scalar`` (only if ``sample`` branches): ``replay(v, mode=None)``
  is the surrogate of the rest of the program with this site forced to ``v`` and every other
  random choice unchanged (``jax.vmap`` it over many values). Return a scalar whose value
  estimates ``E[f]`` and whose ``jax.grad`` estimates its gradient.

Nothing else changes: pass an instance as ``estimator=`` at a site or in ``vi.with_estimators``.

Examples:
    >>> import dataclasses, jax, ppl
    >>> from inference import vi
    >>> @dataclasses.dataclass(frozen=True)
    ... class PlainScore(vi.Strategy):          # REINFORCE without baseline, written from scratch
    ...     name = "plain_score"
    ...     def sample(self, site):
    ...         v = jax.lax.stop_gradient(site.draw())
    ...         site.add_score_term(v)
    ...         return v
    >>> @ppl.gen
    ... def coin(p):
    ...     return ppl.flip(p, estimator=PlainScore()) @ "b"
    >>> @vi.expectation
    ... def f(key, p):
    ...     return 3.0 * coin.simulate(key, p).retval
    >>> g = jax.vmap(lambda k: f.grad_estimate(k, 0.4))(jax.random.split(jax.random.key(0), 4000))
    >>> bool(abs(g.mean() - 3.0) < 0.3)
    True
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as nd

from ppl import keys as _keys
from ppl.errors import ModelError, fmt_addr

__all__ = ["Strategy", "Site", "Reparam", "Reinforce", "Enum", "MVD", "reparam", "reinforce", "enum",
           "mvd", "EstimatorError", "default_strategy", "check_applicable", "MAX_ENUM"]

#: the largest joint support an ``enum`` site may have (a site with n elements of k values each has
#: ``k ** n`` configurations, each a replay of the rest of the program)
MAX_ENUM = 4096

_sg = jax.lax.stop_gradient


class EstimatorError(ModelError):
    """A gradient strategy cannot be used at a site (or the expectation program is malformed)."""


def plain_key(key):
    """A plain ``jax.random`` key from a ppl key (a lane key is folded into its base key)."""
    if isinstance(key, _keys.LaneKey):
        return jax.random.fold_in(key.base, key.lane)
    return key


class Site:
    """One sampling site of an expectation program, as a :class:`Strategy` sees it.

    Attributes: ``path`` (the address tuple), ``gf`` (the site's distribution generative
    function), ``d`` (the numpyro distribution), ``key`` (the site's ppl key), ``strategy``,
    ``mode`` (``"value"`` when only the estimate is computed, ``"grad"`` when the surrogate is
    differentiated), ``nested`` (True when the site is sampled inside ``ppl.vmap`` / ``repeat`` /
    ``scan`` / ``cond`` or a ``jax.vmap`` / ``lax.scan`` of the program, where the program cannot
    be replayed per value), and ``params`` / ``args`` of the expectation program.

    Examples:
        >>> import jax, ppl
        >>> from inference import vi
        >>> s = vi.Site(("z",), ppl.normal, ppl.normal.make((0.0, 1.0)))
        >>> s.where
        "site 'z', normal (Normal)"
    """

    def __init__(self, path, gf, d, key=None, strategy=None, *, program=None, sid=None):
        self.path, self.gf, self.d, self.key, self.strategy = tuple(path), gf, d, key, strategy
        self._program, self._sid = program, sid

    def __repr__(self):
        return f"<Site {fmt_addr(self.path)} {self.strategy!r}>"

    @property
    def where(self) -> str:
        """``"site 'addr', name (Distribution)"`` for error messages."""
        return f"site {fmt_addr(self.path)}, {getattr(self.gf, 'name', '?')} ({type(self.d).__name__})"

    def _prog(self):
        if self._program is None:
            raise EstimatorError(f"{self.where}: this Site is not being sampled by an expectation program")
        return self._program

    @property
    def mode(self) -> str:
        return self._prog().mode

    @property
    def nested(self) -> bool:
        return self._prog().site_nested()

    @property
    def params(self):
        return self._prog().ctx.params

    @property
    def args(self) -> tuple:
        return self._prog().ctx.args

    def draw(self, key=None):
        """A draw from the site's distribution with the site's key (or ``key``), differentiable
        with respect to the distribution's parameters where numpyro's sampler is."""
        return self.gf.draw(self.d, self.key if key is None else key)

    def fold_key(self, data: int):
        """A plain ``jax.random`` key derived from the site's key, for a strategy's own randomness."""
        return jax.random.fold_in(plain_key(self.key), data)

    def add_score_term(self, value, baseline=None):
        """Add the score-function term for ``value``: the surrogate's gradient gains
        ``(f - b) * grad log q(value)``, where ``f`` is the whole program's value. ``baseline`` is
        ``None``, a number, or a callable ``baseline(replay) -> scalar`` evaluated after the
        program ran (``replay`` as in :meth:`Strategy.expand`; not available for ``nested`` sites).
        Ignored in ``"value"`` mode. Nested sites take their log density from the returned trace."""
        self._prog().score_term(self, value, baseline)

    def branch(self, value):
        """Stop here and let the strategy's ``expand(site, value, replay)`` build the surrogate
        (raises :class:`EstimatorError` for ``nested`` sites, which cannot be replayed)."""
        self._prog().branch(self, value)


class Strategy:
    """Base class of gradient strategies; calling an instance with no arguments returns it.

    Subclasses implement ``sample`` and optionally ``check`` and ``expand`` (see the module
    docstring of ``inference.vi.estimators`` and ``docs/vi.md``).

    Examples:
        >>> from inference import vi
        >>> isinstance(vi.enum, vi.Strategy), vi.enum() is vi.enum
        (True, True)
    """

    name = "strategy"

    def __call__(self):
        return self

    def __repr__(self):
        return f"vi.{self.name}"

    def check(self, site: Site) -> None:
        """Raise :class:`EstimatorError` if this strategy cannot be used at ``site``."""

    def sample(self, site: Site):
        """The value the program sees at ``site`` (see the module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} must implement sample(site)")

    def expand(self, site: Site, value, replay):
        """The surrogate for a site that called ``site.branch(value)``."""
        raise EstimatorError(
            f"{self!r} at {site.where} called site.branch() but {type(self).__name__} does not "
            "implement expand(site, value, replay)")


@dataclasses.dataclass(frozen=True, repr=False)
class Reparam(Strategy):
    """Pathwise (reparameterization) gradient through the sampler."""

    name = "reparam"

    def check(self, site):
        if not getattr(site.d, "has_rsample", False):
            raise EstimatorError(
                f"vi.reparam at {site.where}: this distribution has no reparameterized sampler (it is "
                "discrete or numpyro cannot differentiate its sampler); use vi.reinforce(), vi.enum "
                "(finite support) or vi.mvd")

    def sample(self, site):
        return site.draw()


@dataclasses.dataclass(frozen=True, repr=False)
class Enum(Strategy):
    """Exact enumeration of a finite support (the rest of the program is replayed per value)."""

    name = "enum"

    def check(self, site):
        d, where = site.d, site.where
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

    def sample(self, site):
        return site.branch(_sg(site.draw()))

    def expand(self, site, value, replay):
        d = site.d
        configs = enum_configs(d)
        logp = jax.vmap(lambda c: jnp.sum(d.log_prob(c)))(configs)
        vals = jax.vmap(replay)(configs)
        w = jnp.exp(logp)
        return jnp.sum(jnp.where(w > 0, w * vals, 0.0))


@dataclasses.dataclass(frozen=True, repr=False)
class MVD(Strategy):
    """Measure-valued derivative (normal, Bernoulli/flip, categorical)."""

    name = "mvd"

    def check(self, site):
        if _mvd_rule(site.d) is None:
            raise EstimatorError(
                f"vi.mvd at {site.where}: measure-valued derivatives are implemented for normal, "
                "Bernoulli/flip and categorical sites; use vi.reparam or vi.reinforce() here")

    def sample(self, site):
        v = _sg(site.draw())
        if site.mode == "value" and not site.nested:
            return v
        return site.branch(v)

    def expand(self, site, value, replay):
        # the main run at the sampled value plus a zero-valued term carrying the derivative
        main = replay(value)
        idx, new, combine = mvd_requests(site.d, value, site.fold_key(0x3D))
        shape = jnp.shape(value)
        vals = jax.vmap(lambda i, e: replay(value.reshape(-1).at[i].set(e).reshape(shape), "value"))(idx, new)
        return main + combine(_sg(vals), _sg(main))


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
        if baseline is not None and not (callable(baseline) or (isinstance(baseline, str) and baseline == "mean")
                                         or (isinstance(baseline, (int, float)) and not isinstance(baseline, bool))):
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

    def sample(self, site):
        v = _sg(site.draw())
        if site.mode == "grad":
            site.add_score_term(v, self._baseline(site))
        return v

    def _baseline(self, site):
        b = self.baseline
        if b is None or (isinstance(b, (int, float)) and not isinstance(b, bool)):
            return None if b is None else float(b)
        if isinstance(b, str):  # "mean": replays with fresh draws at this site
            if site.nested:
                raise EstimatorError(
                    f"vi.reinforce(baseline=\"mean\") at site {fmt_addr(site.path)} ({site.gf.name}): the "
                    "site is sampled inside ppl.vmap / repeat / scan / cond, where it cannot be replayed; "
                    "use a constant or callable baseline there")

            def mean(replay):
                vals = [replay(_sg(site.draw(_keys.fold_in(site.key, 0x5EED + j))), "value")
                        for j in range(self.n_baseline)]
                return sum(vals) / len(vals)
            return mean

        def call(replay):
            out = b(site.params, *site.args)
            if jnp.shape(out) != ():
                raise EstimatorError(f"the baseline callable at site {fmt_addr(site.path)} returned shape "
                                     f"{jnp.shape(out)}; it must return a scalar")
            return out
        return call


reparam = Reparam()
enum = Enum()
mvd = MVD()
reinforce = Reinforce()


def as_strategy(s, where: str) -> Strategy:
    if isinstance(s, Strategy):
        return s
    raise EstimatorError(
        f"{where}: {s!r} is not a gradient strategy; use vi.reparam, vi.reinforce(...), vi.enum, vi.mvd "
        "or an instance of a vi.Strategy subclass")


def default_strategy(d) -> Strategy:
    """``reparam`` where numpyro has a reparameterized sampler, ``reinforce`` otherwise."""
    return reparam if getattr(d, "has_rsample", False) else reinforce


def check_applicable(strategy: Strategy, path, gf, d):
    """Raise an :class:`EstimatorError` naming the site if ``strategy`` cannot be used for ``d``
    (``strategy.check`` on a :class:`Site` without a program)."""
    strategy.check(Site(path, gf, d, strategy=strategy))


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
