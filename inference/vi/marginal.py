"""Approximate marginalization and normalization inside expectation programs.

- :func:`marginal`: an importance-sampling estimate of the log marginal density ``log q(z)`` of a
  variational family with auxiliary variables ``q(z, u)``, using a reverse model ``r(u | z)``:
  ``log (1/K) sum_k q(z, u_k) / r(u_k | z)`` with ``u_k ~ r``, optionally including the auxiliary
  value that produced ``z`` as one more particle (IWHVI). Its expectation is a lower bound on
  ``log q(z)`` without the included particle and an upper bound with it. Sampling ``u_k`` is
  part of the expectation program, so gradients reach ``r``'s parameters.
- :func:`normalize`: self-normalized importance sampling of a model's posterior with a proposal
  (for wake-sleep objectives). The self-normalized weights are biased, and no gradient flows
  through the sampling (the proposal is run with ``stop_gradient`` parameters and no estimator
  terms): this is the explicit, documented biased construct of reweighted wake-sleep.
- :func:`detached`: a context in which sites are sampled without any gradient estimator
  (stop-gradient values, no score terms) -- the building block of :func:`normalize`.

Examples:
    >>> import jax, jax.numpy as jnp, ppl
    >>> from inference import vi
    >>> @ppl.gen
    ... def model(params):
    ...     z = ppl.normal(0.0, 1.0) @ "z"
    ...     return ppl.normal(z, 1.0) @ "x"
    >>> @ppl.gen
    ... def guide(params, x):
    ...     return ppl.normal(params["m"], 1.0) @ "z"
    >>> obs = ppl.ChoiceMap({"x": 1.0})
    >>> post = vi.normalize(jax.random.key(0), model, guide, {"m": jnp.array(0.5)}, obs, 2000, guide_args=(1.0,))
    >>> bool(abs(post.mean(lambda ch: ch["z"]) - 0.5) < 0.05)     # posterior mean x / 2
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any

import jax
import jax.numpy as jnp

from ppl.choicemap import ChoiceMap

__all__ = ["marginal", "normalize", "Normalized", "detached"]

_sg = jax.lax.stop_gradient


class _Detach(threading.local):
    def __init__(self):
        self.depth = 0


DETACH = _Detach()


@contextlib.contextmanager
def detached():
    """Sample every site in the block without a gradient estimator (values are stop-gradient).

    Examples:
        >>> import jax, ppl
        >>> from inference import vi
        >>> @vi.expectation
        ... def f(key, mu):
        ...     with vi.detached():
        ...         z = ppl.normal.simulate(key, mu, 1.0).retval
        ...     return z * mu                 # gradient is z only: no path through the sample
        >>> v, g = f.value_and_grad_estimate(jax.random.key(0), 2.0)
        >>> bool(abs(g - v / 2.0) < 1e-6)
        True
    """
    DETACH.depth += 1
    try:
        yield
    finally:
        DETACH.depth -= 1


def _split_keys(key, k):
    return jax.random.split(key, k)


def _log_mean_exp(log_w):
    """``log (1/K) sum_k exp(log_w_k)`` over a vector of ``K`` log weights."""
    return jax.nn.logsumexp(log_w) - jnp.log(log_w.shape[0])


def marginal(key, guide, reverse, params, z: ChoiceMap, n_particles: int, guide_args=(),
             include: ChoiceMap | None = None):
    """Estimate ``log q(z) = log \\int q(z, u) du`` by importance sampling with ``reverse``.

    ``guide(params, *guide_args)`` is the joint family over ``z``'s addresses and auxiliary
    addresses; ``reverse(params, z, *guide_args)`` proposes the auxiliary choices. Returns
    ``log (1/(K + [include])) sum_k q(z, u_k) / r(u_k | z)`` over ``K = n_particles`` draws
    ``u_k ~ r`` plus, when given, the auxiliary choices ``include`` (the ones that produced ``z``).

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference import vi
        >>> @ppl.gen
        ... def joint(params):                     # q(z) = N(0, 2): u ~ N(0, 1), z ~ N(u, 1)
        ...     u = ppl.normal(0.0, 1.0) @ "u"
        ...     return ppl.normal(u, 1.0) @ "z"
        >>> @ppl.gen
        ... def rev(params, z):                    # the exact posterior r(u | z) = N(z/2, 1/2)
        ...     return ppl.normal(z["z"] / 2, jnp.sqrt(0.5)) @ "u"
        >>> est = vi.marginal(jax.random.key(0), joint, rev, {}, ppl.ChoiceMap({"z": 1.0}), 3)
        >>> bool(abs(est - jax.scipy.stats.norm.logpdf(1.0, 0.0, jnp.sqrt(2.0))) < 1e-5)
        True
    """

    def one(k):
        r = reverse.simulate(k, params, z, *guide_args)
        lq, _ = guide.assess(z | r.choices, params, *guide_args)
        return lq - r.score

    terms = []
    if n_particles > 0:
        terms.append(jax.vmap(one)(_split_keys(key, n_particles)))
    if include is not None:
        r_lp, _ = reverse.assess(include, params, z, *guide_args)
        lq, _ = guide.assess(z | include, params, *guide_args)
        terms.append(jnp.reshape(lq - r_lp, (1,)))
    if not terms:
        raise ValueError("vi.marginal: needs n_particles > 0 or an included auxiliary choice map")
    return _log_mean_exp(jnp.concatenate(terms))


@dataclasses.dataclass(frozen=True)
class Normalized:
    """Self-normalized importance sample: ``choices`` (leading particle axis), ``log_p`` (model
    log density of each particle with the observations), ``log_q`` (proposal log density)."""

    choices: Any
    log_p: Any
    log_q: Any

    @property
    def log_weights(self):
        return self.log_p - self.log_q

    @property
    def weights(self):
        """Normalized weights (stop-gradient)."""
        return jax.nn.softmax(_sg(self.log_weights))

    @property
    def log_marginal(self):
        """``log (1/K) sum_k w_k``: log of an unbiased estimate of the evidence."""
        return _log_mean_exp(self.log_weights)

    def mean(self, fn):
        """Self-normalized estimate of ``E[fn(choices)]`` under the posterior."""
        vals = jax.vmap(fn)(self.choices)
        w = self.weights.reshape((-1,) + (1,) * (jnp.ndim(vals) - 1))
        return jnp.sum(w * vals, axis=0)


def normalize(key, model, guide, params, observations, n_particles: int, model_args=(), guide_args=()):
    """Approximate the posterior of ``model(params, *model_args)`` given ``observations`` by
    self-normalized importance sampling with proposal ``guide(params, *guide_args)``.

    Biased (self-normalized) and with no gradient through the sampling: the proposal runs with
    stop-gradient parameters and without estimator terms. ``log_weights`` keep their gradient with
    respect to ``params`` through the densities, so wake-sleep objectives can differentiate
    ``sum_k w_k log p(x, z_k)`` and ``sum_k w_k log q(z_k)``.

    Examples:
        >>> import jax, ppl
        >>> from inference import vi
        >>> @ppl.gen
        ... def model(params):
        ...     return ppl.normal(ppl.normal(0.0, 1.0) @ "z", 1.0) @ "x"
        >>> @ppl.gen
        ... def guide(params):
        ...     return ppl.normal(0.0, 1.0) @ "z"
        >>> post = vi.normalize(jax.random.key(1), model, guide, {}, ppl.ChoiceMap({"x": 0.0}), 16)
        >>> post.log_weights.shape
        (16,)
    """
    obs = observations if isinstance(observations, ChoiceMap) else ChoiceMap(observations)
    sp = _sg(params)

    def one(k):
        with detached():
            q = guide.simulate(k, sp, *guide_args)
        choices = q.choices
        lq, _ = guide.assess(choices, params, *guide_args)
        lp, _ = model.assess(choices | obs, params, *model_args)
        return choices, lp, lq

    choices, lp, lq = jax.vmap(one)(_split_keys(key, n_particles))
    return Normalized(choices, lp, lq)
