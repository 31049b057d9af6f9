"""The objective library: each objective is an ordinary expectation program (read and copy them).

Convention: the model and the guide both take the variational/model parameters first:
``model(params, *model_args)`` and ``guide(params, *guide_args)`` (a model without learnable
parameters simply ignores its first argument). Each constructor returns a :class:`vi.Expectation`
called as ``objective(key, params, observations, model_args=(), guide_args=())`` (use its
``estimate`` / ``grad_estimate`` / ``value_and_grad_estimate``, or :func:`vi.fit`), for one
datum; :func:`vi.map_mean` averages it over a batch.

- :func:`elbo`: ``log p(x, z) - log q(z)``.
- :func:`iwelbo`: ``log (1/K) sum_k p(x, z_k) / q(z_k)`` (particles from ``guide.repeat(K)``;
  reparameterized and score-function sites both work; :func:`vimco` adds control variates).
- :func:`hvi`, :func:`iwhvi`, :func:`diwhvi`: hierarchical guides ``q(z, u)`` with auxiliary
  variables ``u``, whose marginal ``q(z)`` is estimated with a reverse model ``r(u | z)``
  (:func:`vi.marginal`).
- :func:`rws` (with :func:`wake_p`, :func:`wake_q`, :func:`sleep_q`): reweighted wake-sleep, built
  on the *biased* self-normalized :func:`vi.normalize`.
- :func:`vimco`: the IWELBO with per-particle leave-one-out control variates for score-function
  (discrete) guides.

Examples:
    >>> import jax, jax.numpy as jnp, ppl
    >>> from inference import vi
    >>> @ppl.gen
    ... def model(params):
    ...     z = ppl.normal(0.0, 1.0) @ "z"
    ...     return ppl.normal(z, 1.0) @ "x"
    >>> @ppl.gen
    ... def guide(params):
    ...     return ppl.normal(params["m"], jnp.exp(params["s"])) @ "z"
    >>> obj = vi.elbo(model, guide)
    >>> p = {"m": jnp.array(0.5), "s": jnp.log(jnp.sqrt(0.5))}     # the exact posterior for x = 1
    >>> v = obj.estimate(jax.random.key(0), p, ppl.ChoiceMap({"x": 1.0}))
    >>> bool(abs(v - jax.scipy.stats.norm.logpdf(1.0, 0.0, jnp.sqrt(2.0))) < 1e-5)   # ELBO = log Z
    True
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ppl.choicemap import Selection, select

from .adev import Expectation, expectation
from .marginal import _log_mean_exp, detached, marginal, normalize

__all__ = ["elbo", "iwelbo", "hvi", "iwhvi", "diwhvi", "rws", "wake_p", "wake_q", "sleep_q", "vimco"]

_sg = jax.lax.stop_gradient


def elbo(model, guide) -> Expectation:
    """The evidence lower bound ``E_q[log p(x, z) - log q(z)]``.

    Examples:
        >>> import jax, ppl
        >>> from inference import vi
        >>> @ppl.gen
        ... def model(params):
        ...     return ppl.normal(ppl.normal(0.0, 1.0) @ "z", 1.0) @ "x"
        >>> @ppl.gen
        ... def guide(params):
        ...     return ppl.normal(params, 1.0) @ "z"
        >>> g = vi.elbo(model, guide).grad_estimate(jax.random.key(0), 0.0, ppl.ChoiceMap({"x": 1.0}))
        >>> g.shape
        ()
    """

    @expectation
    def elbo(key, params, observations, model_args=(), guide_args=()):
        q = guide.simulate(key, params, *guide_args)
        logp, _ = model.assess(q.choices | observations, params, *model_args)
        return logp - q.score

    return elbo


def iwelbo(model, guide, K: int) -> Expectation:
    """The importance-weighted ELBO with ``K`` particles: ``E[log (1/K) sum_k p(x, z_k)/q(z_k)]``.

    It increases with ``K`` towards ``log p(x)``.

    Examples:
        >>> import jax, ppl
        >>> from inference import vi
        >>> @ppl.gen
        ... def model(params):
        ...     return ppl.normal(ppl.normal(0.0, 1.0) @ "z", 1.0) @ "x"
        >>> @ppl.gen
        ... def guide(params):
        ...     return ppl.normal(params, 2.0) @ "z"
        >>> float(vi.iwelbo(model, guide, 10).estimate(jax.random.key(0), 0.0, ppl.ChoiceMap({"x": 1.0}))) < 0
        True
    """
    K = int(K)

    @expectation
    def iwelbo(key, params, observations, model_args=(), guide_args=()):
        # K particles as one call of guide.repeat(K): works for reparameterized and score-function
        # sites alike (vi.enum / vi.mvd sites need separate top-level calls, as in vimco)
        # log q(z_k) is each particle's own score in the repeated trace (not a second guide.assess:
        # a second pass would run the guide's backward pass twice in the gradient)
        q = guide.repeat(K).simulate(key, params, *guide_args)
        particles, log_q = q.choices, q.inner.score
        log_p = jax.vmap(lambda ch: model.assess(ch | observations, params, *model_args)[0])(particles)
        return _log_mean_exp(log_p - log_q)

    iwelbo.name = f"iwelbo({K})"
    return iwelbo


def _as_selection(aux) -> Selection:
    if isinstance(aux, Selection):
        return aux
    if isinstance(aux, (str, tuple)):
        return select(aux)
    return select(*aux)


def _hvi_log_weight(key, model, guide, reverse, sel, K, params, observations, model_args, guide_args):
    """``log p(x, z) - log q-hat(z)`` for ``(z, u) ~ q``, with ``log q-hat(z)`` from ``vi.marginal``
    (``K`` reverse draws plus the ``u`` that produced ``z``): the integrand of :func:`iwhvi`."""
    k1, k2 = jax.random.split(key)
    q = guide.simulate(k1, params, *guide_args)
    z, u = q.choices.filter(~sel), q.choices.filter(sel)
    logp, _ = model.assess(z | observations, params, *model_args)
    return logp - marginal(k2, guide, reverse, params, z, K, guide_args, include=u)


def iwhvi(model, guide, reverse, aux, K: int) -> Expectation:
    """Importance-weighted hierarchical VI (Sobolev and Vetrov, 2019).

    ``guide(params, *guide_args)`` samples latent choices ``z`` and auxiliary choices ``u`` (the
    addresses in ``aux``); ``reverse(params, z, *guide_args)`` proposes ``u`` given ``z``. The
    marginal ``log q(z)`` is over-estimated (in expectation) by ``vi.marginal`` with ``K`` reverse
    draws plus the ``u`` that produced ``z``, so the objective is a lower bound on the ELBO of the
    marginal ``q(z)`` that tightens as ``K`` grows; ``K = 0`` is :func:`hvi`.

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference import vi
        >>> @ppl.gen
        ... def model(params):
        ...     return ppl.normal(ppl.normal(0.0, 1.0) @ "z", 1.0) @ "x"
        >>> @ppl.gen
        ... def guide(params):
        ...     u = ppl.normal(0.0, 1.0) @ "u"
        ...     return ppl.normal(params["a"] * u, 0.5) @ "z"
        >>> @ppl.gen
        ... def reverse(params, z):
        ...     return ppl.normal(z["z"] * params["r"], 1.0) @ "u"
        >>> obj = vi.iwhvi(model, guide, reverse, "u", 4)
        >>> g = obj.grad_estimate(jax.random.key(0), {"a": 1.0, "r": 0.5}, ppl.ChoiceMap({"x": 1.0}))
        >>> sorted(g)
        ['a', 'r']
    """
    sel = _as_selection(aux)
    K = int(K)

    @expectation
    def iwhvi(key, params, observations, model_args=(), guide_args=()):
        return _hvi_log_weight(key, model, guide, reverse, sel, K, params, observations, model_args, guide_args)

    iwhvi.name = f"iwhvi({K})"
    return iwhvi


def hvi(model, guide, reverse, aux) -> Expectation:
    """Hierarchical VI: ``E_q(z,u)[log p(x, z) + log r(u | z) - log q(z, u)]`` (:func:`iwhvi` with K=0)."""
    obj = iwhvi(model, guide, reverse, aux, 0)
    obj.name = "hvi"
    return obj


def diwhvi(model, guide, reverse, aux, K: int, M: int) -> Expectation:
    """Doubly importance-weighted HVI: an IWELBO over ``M`` particles ``z_m`` whose marginal
    densities are each estimated as in :func:`iwhvi` with ``K`` reverse draws."""
    sel = _as_selection(aux)
    K, M = int(K), int(M)

    @expectation
    def diwhvi(key, params, observations, model_args=(), guide_args=()):
        def log_weight(k):
            return _hvi_log_weight(k, model, guide, reverse, sel, K, params, observations, model_args, guide_args)

        log_w = jax.vmap(log_weight)(jax.random.split(key, M))
        return _log_mean_exp(log_w)

    diwhvi.name = f"diwhvi({K}, {M})"
    return diwhvi


# ----------------------------------------------------------------------------- wake-sleep
def _wake_surrogate(post, log_density):
    """Value: the IWELBO estimate ``post.log_marginal``; gradient: that of the self-normalized
    ``sum_k wbar_k log_density_k`` (weights stop-gradient)."""
    surrogate = jnp.sum(post.weights * log_density)
    return _sg(post.log_marginal) + surrogate - _sg(surrogate)


def wake_p(model, guide, K: int) -> Expectation:
    """Wake phase for the model: ``sum_k wbar_k log p(x, z_k)`` with self-normalized weights
    (biased; no gradient through sampling). Its value is the IWELBO estimate; its gradient is
    the wake-p gradient."""
    K = int(K)

    @expectation
    def wake_p(key, params, observations, model_args=(), guide_args=()):
        post = normalize(key, model, guide, params, observations, K, model_args, guide_args)
        return _wake_surrogate(post, post.log_p)

    return wake_p


def wake_q(model, guide, K: int) -> Expectation:
    """Wake phase for the guide: ``sum_k wbar_k log q(z_k)`` (biased). Value: the IWELBO estimate."""
    K = int(K)

    @expectation
    def wake_q(key, params, observations, model_args=(), guide_args=()):
        post = normalize(key, model, guide, params, observations, K, model_args, guide_args)
        return _wake_surrogate(post, post.log_q)

    return wake_q


def sleep_q(model, guide, guide_args_of=None) -> Expectation:
    """Sleep phase for the guide: ``log q(z | x)`` for ``(z, x)`` dreamed from the model.

    The observed addresses are those of the ``observations`` argument (its values are unused);
    ``guide_args_of(dreamed_observations)`` gives the guide's arguments for the dream (default:
    ``guide_args`` unchanged). Value: ``log q(z | x)`` of the dream.
    """

    @expectation
    def sleep_q(key, params, observations, model_args=(), guide_args=()):
        with detached():
            dream = model.simulate(key, _sg(params), *model_args).choices
        obs_sel = select(*[path for path, _ in observations.leaves()])
        x, z = dream.filter(obs_sel), dream.filter(~obs_sel)
        args = guide_args if guide_args_of is None else tuple(guide_args_of(x))
        log_q, _ = guide.assess(z, params, *args)
        return log_q

    return sleep_q


def rws(model, guide, K: int) -> Expectation:
    """Reweighted wake-sleep (wake-p for the model, wake-q for the guide) with ``K`` particles.

    The value is the IWELBO estimate (a lower bound on ``log p(x)``); the gradient is the sum of
    the wake-p and wake-q gradients (biased: self-normalized weights, no gradient through the
    sampling, as in Bornschein and Bengio, 2015). Add :func:`sleep_q` for the sleep phase.

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference import vi
        >>> @ppl.gen
        ... def model(params):
        ...     c = ppl.flip(0.5) @ "c"
        ...     return ppl.normal(params["mu"] * (2 * c - 1), 1.0) @ "x"
        >>> @ppl.gen
        ... def guide(params, x):
        ...     return ppl.bernoulli(logits=params["w"] * x) @ "c"
        >>> p = {"mu": jnp.array(1.0), "w": jnp.array(0.0)}
        >>> g = vi.rws(model, guide, 5).grad_estimate(jax.random.key(0), p, ppl.ChoiceMap({"x": 2.0}), (), (2.0,))
        >>> sorted(g)
        ['mu', 'w']
    """
    K = int(K)

    @expectation
    def rws(key, params, observations, model_args=(), guide_args=()):
        post = normalize(key, model, guide, params, observations, K, model_args, guide_args)
        return _wake_surrogate(post, post.log_p + post.log_q)

    rws.name = f"rws({K})"
    return rws


# ----------------------------------------------------------------------------- VIMCO
def vimco(model, guide, K: int) -> Expectation:
    """VIMCO (Mnih and Rezende, 2016): the IWELBO with leave-one-out control variates.

    For guides whose sites are all score-function (``vi.reinforce``) sites, typically discrete
    latents. The ``K`` particles are separate top-level guide calls (a Python loop), so ADEV adds
    ``L * grad log q(z_k)`` for each; the zero-valued term ``- sum_k stop(b_k) * (log q(z_k) -
    stop(log q(z_k)))`` turns that into ``(L - b_k) * grad log q(z_k)`` where ``b_k`` is the bound
    with ``z_k``'s weight replaced by the geometric mean of the others (independent of ``z_k``).

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference import vi
        >>> @ppl.gen
        ... def model(params):
        ...     c = ppl.flip(0.5) @ "c"
        ...     return ppl.normal(params["mu"] * (2 * c - 1), 1.0) @ "x"
        >>> @ppl.gen
        ... def guide(params, x):
        ...     return ppl.bernoulli(logits=params["w"] * x) @ "c"
        >>> p = {"mu": jnp.array(1.0), "w": jnp.array(0.0)}
        >>> g = vi.vimco(model, guide, 4).grad_estimate(jax.random.key(0), p, ppl.ChoiceMap({"x": 2.0}), (), (2.0,))
        >>> sorted(g)
        ['mu', 'w']
    """
    K = int(K)
    if K < 2:
        raise ValueError("vi.vimco needs K >= 2 particles (the control variates leave one out)")

    @expectation
    def vimco(key, params, observations, model_args=(), guide_args=()):
        log_w, log_q = [], []
        for k in range(K):
            q = guide.simulate(jax.random.fold_in(key, k), params, *guide_args)
            logp, _ = model.assess(q.choices | observations, params, *model_args)
            log_w.append(logp - q.score)
            log_q.append(q.score)
        log_w, log_q = jnp.stack(log_w), jnp.stack(log_q)
        bound = _log_mean_exp(log_w)
        # leave-one-out: replace log w_k by the mean of the other log weights
        lw = _sg(log_w)
        others_mean = (jnp.sum(lw) - lw) / (K - 1)
        loo = jnp.where(jnp.eye(K, dtype=bool), others_mean[:, None], lw[None, :])
        baselines = jax.nn.logsumexp(loo, axis=1) - jnp.log(K)
        control = jnp.sum(_sg(baselines) * (log_q - _sg(log_q)))
        return bound - control

    vimco.name = f"vimco({K})"
    return vimco
