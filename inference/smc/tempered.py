"""Tempered SMC / annealed importance sampling from the prior to the posterior, and resample-move SMC.

:func:`tempered` moves particles through the targets ``pi_b(x) ∝ p(x) p(obs | x)^b`` for an
increasing schedule ``0 < b_1 < ... < b_K = 1``: reweight by ``(b_k - b_{k-1}) log p(obs | x)``,
resample when the ESS falls below ``ess_threshold * N``, then move every particle with random-walk
Metropolis-Hastings steps that leave ``pi_{b_k}`` invariant (scale: ``step_size`` times the
particles' current spread, per coordinate). With ``ess_threshold=0`` it is annealed importance
sampling (no resampling). The log prior and log likelihood of a particle come from the GFI alone:
``log p(x) = generate(x).weight`` (observed sites sampled, so their density cancels) and
``log p(x, obs) = assess(x | obs)``. Only floating-point latent choices are moved.

:func:`resample_move` runs init / extend / adaptive resampling / rejuvenation with any MCMC kernel
over a sequence of targets (``model(*args_k)`` given ``observations_k``), for example data arriving
one batch at a time.

Example:
    >>> import jax, jax.numpy as jnp, ppl
    >>> from inference import smc
    >>> @ppl.gen
    ... def model():
    ...     mu = ppl.normal(0.0, 3.0) @ "mu"
    ...     return ppl.normal(jnp.full(10, mu), 1.0) @ "ys"
    >>> obs = ppl.ChoiceMap({"ys": jnp.full(10, 2.0)})
    >>> out = smc.tempered(jax.random.key(0), model, (), obs, 500, n_temps=10, n_mcmc=1)
    >>> bool(abs(out.particles.expectation(lambda tr: tr.choices["mu"]) - 1.98) < 0.1)
    True
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ppl import keys as pkeys
from ppl.choicemap import Masked, select

from .. import sharding
from ._util import as_choicemap, staged
from .particles import ParticleCollection, gather
from .pmmh import random_walk
from .resampling import ess as _ess
from .resampling import log_normalize, resample_indices
from .steps import extend, init, rejuvenate, resample_if

__all__ = ["TemperedResult", "tempered", "ais", "power_schedule", "resample_move"]


@dataclasses.dataclass(eq=False)
class TemperedResult:
    """``particles`` (a :class:`ParticleCollection` of posterior traces with weights and log Z-hat),
    ``betas`` (the schedule), ``ess`` and ``acceptance`` (mean MH acceptance) per temperature."""

    particles: Any
    betas: Any
    ess: Any
    acceptance: Any

    def log_marginal_likelihood(self):
        return self.particles.log_marginal_likelihood()


jax.tree_util.register_dataclass(
    TemperedResult, data_fields=["particles", "betas", "ess", "acceptance"], meta_fields=[]
)


def power_schedule(n_temps: int, power: float = 3.0):
    """``((k / K)^power)_{k=1..K}``: small steps near the prior, where the likelihood bites hardest.

    Example:
        >>> power_schedule(4, 1.0).tolist()
        [0.25, 0.5, 0.75, 1.0]
    """
    return (jnp.arange(1, n_temps + 1, dtype=jnp.float32) / n_temps) ** power


def _obs_selection(obs):
    paths = [p for p, v in obs.leaves() if not isinstance(v, Masked)]
    return ~select(*paths) if paths else None


def _tempered(key, model, args, observations, n_particles, betas, n_mcmc, step_size, resampling, ess_threshold):
    obs = observations
    n = int(n_particles)
    log_n = jnp.log(float(n))
    latent_sel = _obs_selection(obs)
    k0, k_scan, k_fin = jax.random.split(key, 3)

    def latents_of(tr):
        return tr.choices.filter(latent_sel) if latent_sel is not None else tr.choices

    def log_prior_lik(k, lat):
        joint, _ = model.assess(lat | obs, *args)
        _, prior = model.generate(k, lat, *args)
        return prior, joint - prior

    traces, ll = jax.vmap(lambda k: model.generate(k, obs, *args), in_axes=(pkeys.LANE_AXES,))(sharding.lanes(k0, n))
    traces, ll = sharding.constrain_batch((traces, ll))
    lat = jax.vmap(latents_of)(traces)
    lp = traces.score - ll

    def body(state, inp):
        lat, lp, ll, lw, log_z, beta_prev = state
        beta, k = inp
        k_res, k_mh = jax.random.split(k)
        lw = lw + (beta - beta_prev) * ll
        _, lse, _ = log_normalize(lw)
        need = _ess(lw) < ess_threshold * n
        idx = jnp.where(need, resample_indices(k_res, lw, resampling), jnp.arange(n, dtype=jnp.int32))
        lat, lp, ll = gather((lat, lp, ll), idx)
        log_z = jnp.where(need, log_z + lse - log_n, log_z)
        lw = jnp.where(need, 0.0, lw)
        w = jnp.exp(log_normalize(lw)[0])

        def spread(x):
            if not jnp.issubdtype(x.dtype, jnp.floating):
                return jnp.zeros(x.shape[1:], x.dtype)
            m = jnp.tensordot(w, x, axes=1)
            return jnp.sqrt(jnp.tensordot(w, (x - m) ** 2, axes=1)) + 1e-6

        scale = jax.tree_util.tree_map(spread, lat)

        def mh(carry, km):
            lat, lp, ll = carry

            def one(k, lat_i, lp_i, ll_i):
                k1, k2, k3 = jax.random.split(k, 3)
                noise = random_walk(k1, jax.tree_util.tree_map(jnp.zeros_like, lat_i), 1.0)
                prop = jax.tree_util.tree_map(lambda v, e, s: v + step_size * e * s if jnp.issubdtype(
                    v.dtype, jnp.floating) else v, lat_i, noise, scale)
                lp_n, ll_n = log_prior_lik(k2, prop)
                log_a = lp_n + beta * ll_n - lp_i - beta * ll_i
                acc = jnp.log(jax.random.uniform(k3)) < jnp.where(jnp.isnan(log_a), -jnp.inf, log_a)
                pick = lambda a, b: jnp.where(acc, a, b)  # noqa: E731
                return jax.tree_util.tree_map(pick, (prop, lp_n, ll_n), (lat_i, lp_i, ll_i)), acc

            (lat, lp, ll), acc = jax.vmap(one)(jax.random.split(km, n), lat, lp, ll)
            return (lat, lp, ll), jnp.mean(acc.astype(jnp.float32))

        (lat, lp, ll), accs = jax.lax.scan(mh, (lat, lp, ll), jax.random.split(k_mh, n_mcmc))
        return (lat, lp, ll, lw, log_z, beta), (_ess(lw), jnp.mean(accs))

    betas = jnp.asarray(betas, jnp.float32)
    state0 = (lat, lp, ll, jnp.zeros(n, jnp.float32), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    (lat, lp, ll, lw, log_z, _), (ess, acc) = jax.lax.scan(body, state0, (betas, jax.random.split(k_scan, betas.shape[0])))
    final, _ = jax.vmap(lambda k, l: model.generate(k, l | obs, *args), in_axes=(pkeys.LANE_AXES, 0))(
        sharding.lanes(k_fin, n), lat)
    dead = log_normalize(lw)[2]
    return TemperedResult(ParticleCollection(final, lw, log_z, dead), betas, ess, acc)


_tempered_staged = staged(("model", "n_particles", "n_mcmc", "resampling", "ess_threshold"), ("args",))(_tempered)


def tempered(key, model, args, observations, n_particles: int, betas=None, n_temps: int = 20, n_mcmc: int = 2,
             step_size: float = 0.5, resampling: str = "systematic", ess_threshold: float = 0.5) -> TemperedResult:
    """Tempered SMC from the prior to the posterior of ``model(*args)`` given ``observations``.

    ``betas`` is the increasing temperature schedule ending at 1 (default
    ``power_schedule(n_temps)``); ``n_mcmc`` random-walk MH moves per temperature with scale
    ``step_size`` times the particle spread. Returns a :class:`TemperedResult` whose
    ``particles.log_marginal_likelihood()`` estimates ``log p(observations)`` (unbiased in Z).
    One ``lax.scan`` over temperatures under ``jit``; a new schedule of the same length, new data
    or a new step size do not recompile.
    """
    betas = power_schedule(int(n_temps)) if betas is None else jnp.asarray(betas, jnp.float32)
    from ppl.core import as_args_tuple

    return _tempered_staged(
        key, model=model, args=as_args_tuple(args, "smc.tempered"), observations=as_choicemap(observations), n_particles=int(n_particles),
        betas=betas, n_mcmc=int(n_mcmc), step_size=jnp.float32(step_size), resampling=resampling,
        ess_threshold=float(ess_threshold),
    )


def ais(key, model, args, observations, n_particles: int, betas=None, n_temps: int = 20, n_mcmc: int = 2,
        step_size: float = 0.5) -> TemperedResult:
    """Annealed importance sampling: :func:`tempered` without resampling.

    Example:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference import smc
        >>> @ppl.gen
        ... def model():
        ...     mu = ppl.normal(0.0, 1.0) @ "mu"
        ...     return ppl.normal(mu, 1.0) @ "y"
        >>> out = smc.ais(jax.random.key(0), model, (), ppl.ChoiceMap({"y": 0.5}), 300, n_temps=5, n_mcmc=1)
        >>> exact = jax.scipy.stats.norm.logpdf(0.5, 0.0, jnp.sqrt(2.0))
        >>> bool(abs(out.log_marginal_likelihood() - exact) < 0.05)
        True
    """
    return tempered(key, model, args, observations, n_particles, betas, n_temps, n_mcmc, step_size,
                    ess_threshold=0.0)


# ------------------------------------------------------------------------------ resample-move
@jax.jit(static_argnames=("kernel", "n_moves", "scheme"))
def _move_j(key, ps, kernel, n_moves, ess_fraction, scheme):
    k1, k2 = jax.random.split(key)
    ps = resample_if(k1, ps, ess_fraction, scheme)
    infos = []
    for k in jax.random.split(k2, n_moves):
        ps, info = rejuvenate(k, ps, kernel)
        infos.append(info)
    return ps, infos


def resample_move(key, model, args_seq, observations_seq, n_particles: int, kernel, n_moves: int = 1,
                  ess_fraction: float = 0.5, scheme: str = "systematic", proposal=None):
    """Resample-move SMC over a sequence of targets ``model(*args_seq[k])`` given ``observations_seq[k]``.

    Step 0 is importance sampling; each later step extends the particles with ``update`` to the
    new arguments and observations (``observations_seq[k]`` holds only the *new* observations),
    resampling adaptively (ESS below ``ess_fraction * N``) and then applying ``n_moves`` sweeps of
    ``kernel(key, trace) -> (trace, info)`` (any MCMC kernel for the current target). Each step is
    compiled once per shape; a Python loop drives the steps. Returns ``(particles, ess_history)``.

    Example:
        >>> import jax, ppl
        >>> from inference import smc
        >>> @ppl.gen
        ... def model(n):
        ...     mu = ppl.normal(0.0, 1.0) @ "mu"
        ...     for i in range(n):
        ...         ppl.normal(mu, 1.0) @ f"y{i}"
        >>> def mh(key, tr):
        ...     k1, k2 = jax.random.split(key)
        ...     new, w, _ = tr.gf.regenerate(k1, tr, ppl.select("mu"), *tr.args)
        ...     acc = jax.numpy.log(jax.random.uniform(k2)) < w
        ...     return jax.tree_util.tree_map(lambda a, b: jax.numpy.where(acc, a, b), new, tr), acc
        >>> obs = [ppl.ChoiceMap({f"y{i}": 1.0}) for i in range(2)]
        >>> ps, ess = smc.resample_move(jax.random.key(0), model, [(1,), (2,)], obs, 200, mh)
        >>> len(ess), ps.traces.choices["y1"].shape
        (2, (200,))
    """
    args_seq, observations_seq = list(args_seq), list(observations_seq)
    if len(args_seq) != len(observations_seq) or not args_seq:
        raise ValueError("resample_move: args_seq and observations_seq must be non-empty and of equal length")
    keys = jax.random.split(key, 2 * len(args_seq))
    ps = init(keys[0], model, tuple(args_seq[0]), observations_seq[0], int(n_particles))
    ess_hist = [ps.ess()]
    for k in range(1, len(args_seq)):
        ps, _ = _move_j(keys[2 * k], ps, kernel, int(n_moves), jnp.float32(ess_fraction), scheme)
        ps = extend(keys[2 * k + 1], ps, tuple(args_seq[k]), observations_seq[k], proposal)
        ess_hist.append(ps.ess())
    return ps, jnp.stack(ess_hist)
