"""Composable SMC steps: pure, jit-able functions from particle collections to particle collections.

- :func:`init`: importance sampling from the prior or a proposal generative function;
- :func:`extend`: move every particle to new model arguments and new observations by ``update``
  (optionally proposing the new choices with a proposal generative function);
- :func:`resample` and :func:`resample_if` (adaptive, below an ESS fraction);
- :func:`rejuvenate`: any MCMC kernel ``kernel(key, trace) -> (trace, info)``, weights unchanged;
- :func:`change`: move particles to a new target model (tempering, annealing, bridging).

Particles are vectorized with lane keys (:mod:`ppl.keys`): the whole particle axis draws its
random numbers from one shared key per site, as hand-written JAX does, so the particle axis is
cheap; each particle still gets independent values and the same key gives the same bits.

Proposal calling conventions (proposals are generative functions):

- ``init``: ``proposal.simulate(key, *proposal_args)``; the weight is
  ``log p(x, obs) - log q(x)`` through ``model.generate(key, obs | q.choices, *args)``.
- ``extend``: ``proposal.simulate(key, trace, *proposal_args)`` with the particle's current
  trace; the weight is ``update``'s weight minus ``log q``.

Storage: values every particle shares (model arguments, observed values) are stored once, not
once per particle (see :class:`~inference.smc.ParticleCollection`): each step traces its
per-particle function once, finds which outputs depend on the particle, and vectorizes only those
(a rejuvenation kernel receives the shared values unbatched, as ``jax.vmap`` with ``in_axes=None``
would pass them). A leaf that had a particle axis before a step keeps it.

Each function below has an example; docs/smc.md composes them into a full SMC loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ppl import keys as pkeys
from ppl.choicemap import ChoiceMap, select

from .. import sharding
from ._util import (LANE_FLAGS, as_choicemap, broadcast_shared, check_alive, check_n_particles, particle_map,
                    renamed_kwargs, staged)
from .particles import ParticleCollection, gather_stored
from .resampling import DEFAULT_RESAMPLING, check_resampling, log_normalize, resample_step

__all__ = ["init", "extend", "resample", "resample_if", "rejuvenate", "change"]


def _constrain(tree, flags):
    """Lay out the per-particle leaves' particle axes over the active mesh (shared leaves as is)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    leaves = [sharding.constrain_batch(x) if f else x for x, f in zip(leaves, flags)]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _weights_out(w, flag, n):
    return jnp.broadcast_to(jnp.asarray(w, jnp.float32), (n,)) if not flag else jnp.asarray(w, jnp.float32)


def _split(flags, tree):
    """Flags of ``(first, second)`` outputs: ``(flags of first, flags of second)``."""
    k = len(jax.tree_util.tree_leaves(tree))
    return flags[:k], flags[k:]


def _keep_axes(new, new_flags, old, old_flags, n):
    """Leaves that had a particle axis before a step keep it (so ``lax.scan`` carries are stable)."""
    if jax.tree_util.tree_structure(new) != jax.tree_util.tree_structure(old):
        return new, new_flags
    flags = tuple(a or b for a, b in zip(new_flags, old_flags))
    if flags == tuple(new_flags):
        return new, flags
    leaves, treedef = jax.tree_util.tree_flatten(new)
    leaves = [jnp.broadcast_to(x, (n,) + jnp.shape(x)) if f and not g else x
              for x, f, g in zip(leaves, flags, new_flags)]
    return jax.tree_util.tree_unflatten(treedef, leaves), flags


def _collect(ps, traces, flags, copies, w, n, log_z=None):
    """A collection from a step's per-particle ``(traces, w)`` outputs (``w`` added to the weights)."""
    tflags, (wflag,) = _split(flags, traces)
    traces, tflags = _keep_axes(traces, tflags, ps.stored_traces, ps.leaf_axes(), n)
    traces = _constrain(traces, tflags)
    w = sharding.constrain_batch(_weights_out(w, wflag, n))
    return ParticleCollection(traces, ps.log_weights + w, ps.log_z, ps.dead, tflags, copies[:len(tflags)])


def _init_impl(key, model, args, observations, n_particles: int, proposal=None, proposal_args=()):
    """Importance sampling: ``n_particles`` weighted traces of ``model(*args)`` given observations.

    With ``proposal=None`` the unobserved choices come from the prior and the weight is the
    likelihood of the observations. Otherwise ``proposal.simulate(key, *proposal_args)`` proposes
    choices (which must not include observed addresses; choices it leaves out are sampled from the
    prior) and the weight is ``log p(x, obs) - log q(x)``.

    Examples:
        >>> import jax, ppl
        >>> from inference import smc
        >>> ps = smc.init(jax.random.key(0), ppl.normal, (0.0, 1.0), None, 10)
        >>> ps.log_weights.tolist() == [0.0] * 10
        True
    """
    obs = as_choicemap(observations)
    n = check_n_particles(n_particles, "smc.init")
    args = tuple(args)
    if proposal is None:
        (traces, w), flags, copies = particle_map(lambda k: model.generate(k, obs, *args), n,
                                                  (sharding.lanes(key, n),), (LANE_FLAGS,))
    else:
        kq, kp = jax.random.split(key)

        def one(kq, kp):
            q = proposal.simulate(kq, *proposal_args)
            tr, w = model.generate(kp, obs | q.choices, *args)
            return tr, w - q.score

        (traces, w), flags, copies = particle_map(one, n, (sharding.lanes(kq, n), sharding.lanes(kp, n)),
                                                  (LANE_FLAGS, LANE_FLAGS))
    tflags, (wflag,) = _split(flags, traces)
    traces = _constrain(traces, tflags)
    w = sharding.constrain_batch(_weights_out(w, wflag, n))
    return ParticleCollection(traces, w, jnp.zeros((), jnp.float32), jnp.zeros((), bool), tflags,
                              copies[:len(tflags)])


def _extend_impl(key, ps: ParticleCollection, args, observations=None, proposal=None, proposal_args=()):
    """Move every particle to new arguments and observations with ``update``; reweight.

    The incremental weight is ``update``'s weight (new minus old log density; choices new to the
    trace are drawn from the prior, or from ``proposal.simulate(key, trace, *proposal_args)`` whose
    log density is then subtracted).

    Examples:
        >>> import jax, ppl
        >>> from inference import smc
        >>> @ppl.gen
        ... def model(n):
        ...     for i in range(n):
        ...         ppl.normal(0.0, 1.0) @ f"x{i}"
        >>> ps = smc.init(jax.random.key(0), model, (1,), None, 5)
        >>> ps = smc.extend(jax.random.key(1), ps, (2,))
        >>> sorted(a for a, _ in ps.traces.choices)
        ['x0', 'x1']
    """
    obs = as_choicemap(observations)
    args = tuple(args)
    n = ps.n_particles

    def one(k, tr):
        if proposal is None:
            new, w, _ = tr.gf.update(k, tr, obs, *args)
            return new, w
        kq, ku = pkeys.fold_in(k, 1), pkeys.fold_in(k, 2)
        q = proposal.simulate(kq, tr, *proposal_args)
        new, w, _ = tr.gf.update(ku, tr, obs | q.choices, *args)
        return new, w - q.score

    (traces, w), flags, copies = particle_map(one, n, (sharding.lanes(key, n), ps.stored_traces),
                                              (LANE_FLAGS, ps.leaf_axes()), (None, ps.leaf_copies()))
    return _collect(ps, traces, flags, copies, w, n)


def _resample_impl(key, ps: ParticleCollection, resampling: str = DEFAULT_RESAMPLING):
    """Resample by the scheme ``resampling`` (a name registered in ``smc.resampling``: ``"systematic"``
    (default), ``"multinomial"``, ``"stratified"``, ``"residual"``, or one added with
    ``smc.register_resampling``); weights become equal and log Z-hat is carried in ``log_z``.
    ``scheme=`` is a deprecated alias of ``resampling=``.

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference import smc
        >>> ps = smc.init(jax.random.key(0), ppl.normal, (0.0, 1.0), ppl.ChoiceMap.value(0.3), 4)
        >>> before = ps.log_marginal_likelihood()
        >>> after = smc.resample(jax.random.key(1), ps).log_marginal_likelihood()
        >>> bool(jnp.allclose(before, after))
        True
    """
    out = resample_step(key, ps.log_weights, ps.log_z, ps.dead, resampling=resampling)
    check_alive(log_normalize(ps.log_weights)[2], "smc.resample")
    return _resampled(ps, out)


def _resample_if_impl(key, ps: ParticleCollection, ess_threshold: float = 0.5,
                      resampling: str = DEFAULT_RESAMPLING):
    """Resample (by the scheme ``resampling``) only when the ESS is below ``ess_threshold * N``
    (adaptive resampling). ``ess_fraction=`` and ``scheme=`` are deprecated aliases of
    ``ess_threshold=`` and ``resampling=``.

    Examples:
        >>> import jax, ppl
        >>> from inference import smc
        >>> ps = smc.init(jax.random.key(0), ppl.normal, (0.0, 1.0), None, 8)
        >>> smc.resample_if(jax.random.key(1), ps, 0.5).log_weights.tolist() == [0.0] * 8
        True
    """
    out = resample_step(key, ps.log_weights, ps.log_z, ps.dead, ess_threshold=ess_threshold, resampling=resampling)
    check_alive(log_normalize(ps.log_weights)[2], "smc.resample_if")
    return _resampled(ps, out)


def _resampled(ps: ParticleCollection, out) -> ParticleCollection:
    """``ps`` after the resampling step ``out`` (a :class:`~inference.smc.resampling.ResampleStep`)."""
    return ParticleCollection(gather_stored(ps.stored_traces, ps.leaf_axes(), out.ancestors), out.log_weights,
                              out.log_z, out.dead, ps.particle_axes, ps.shared_copies)


def _rejuvenate_impl(key, ps: ParticleCollection, kernel):
    """Apply ``kernel(key, trace) -> (trace, info)`` to every particle; weights are unchanged.

    Returns ``(particles, infos)`` (``infos`` vectorized over particles: every leaf has a leading
    particle axis). The kernel must leave the particles' target (the traces' model given their
    observations) invariant. It is traced once for one particle; the values all particles share
    (model arguments, observed values) reach it without a particle axis.

    Examples:
        >>> import jax, ppl
        >>> from inference import smc
        >>> def mh(key, tr):
        ...     k1, k2 = jax.random.split(key)
        ...     new, w, _ = tr.gf.regenerate(k1, tr, ppl.select("x"), *tr.args)
        ...     acc = jax.numpy.log(jax.random.uniform(k2)) < w
        ...     return jax.tree_util.tree_map(lambda a, b: jax.numpy.where(acc, a, b), new, tr), acc
        >>> @ppl.gen
        ... def model():
        ...     x = ppl.normal(0.0, 1.0) @ "x"
        ...     ppl.normal(x, 1.0) @ "y"
        >>> ps = smc.init(jax.random.key(0), model, (), ppl.ChoiceMap({"y": 1.0}), 16)
        >>> ps, acc = smc.rejuvenate(jax.random.key(1), ps, mh)
        >>> acc.shape
        (16,)
    """
    n = ps.n_particles
    ks = jax.random.split(key, n)
    (traces, info), flags, copies = particle_map(kernel, n, (ks, ps.stored_traces), (True, ps.leaf_axes()),
                                                 (None, ps.leaf_copies()))
    tflags, iflags = _split(flags, traces)
    traces, tflags = _keep_axes(traces, tflags, ps.stored_traces, ps.leaf_axes(), n)
    traces = _constrain(traces, tflags)
    out = ParticleCollection(traces, ps.log_weights, ps.log_z, ps.dead, tflags, copies[:len(tflags)])
    return out, broadcast_shared(info, iflags, n)


def _addresses(chm: ChoiceMap):
    return [p for p, _ in chm.leaves()]


def _change_impl(key, ps: ParticleCollection, model, args, observations=None, translate=None):
    """Move particles to a new target ``model(*args)`` given ``observations``; reweight.

    Each particle's choices (mapped by ``translate(choices) -> choices`` if given, with the
    addresses in ``observations`` replaced by the observed values) constrain
    ``model.generate``; choices the new model needs but does not get are drawn from its prior.
    The incremental weight is ``generate``'s weight minus the old trace's score, i.e.
    ``log p_new(x, obs_new) - log p_old(x, obs_old)`` when every choice carries over. Used for
    tempering / annealing (a model with a temperature argument) and for bridging models.

    **A tempered model** takes the temperature as an argument and adds the scaled log likelihood
    with ``ppl.factor(beta * log_lik) @ "lik"`` (a likelihood given as observations at
    distribution sites cannot be scaled); pass ``beta`` as a float or array (data: every
    temperature reuses one compiled program). Between temperatures, resample
    (:func:`resample_if`) and rejuvenate (:func:`rejuvenate`) with an MCMC kernel; docs/smc.md
    has the whole loop, checked against the exact evidence.

    Examples:
        >>> import jax, ppl
        >>> from inference import smc
        >>> @ppl.gen
        ... def model(s):
        ...     return ppl.normal(0.0, s) @ "x"
        >>> ps = smc.init(jax.random.key(0), model, (2.0,), None, 1000)
        >>> ps = smc.change(jax.random.key(1), ps, model, (1.0,))
        >>> bool(abs(ps.log_marginal_likelihood()) < 0.2)   # both normalized: Z ratio is 1
        True

        A tempered model, moved from the prior (``beta = 0``) to ``beta = 0.5``:

        >>> import jax.numpy as jnp
        >>> @ppl.gen
        ... def tempered(beta, ys):
        ...     mu = ppl.normal(0.0, 1.0) @ "mu"
        ...     ppl.factor(beta * jnp.sum(jax.scipy.stats.norm.logpdf(ys, mu, 1.0))) @ "lik"
        >>> ys = jnp.array([0.5, 1.5])
        >>> ps = smc.init(jax.random.key(2), tempered, (0.0, ys), None, 100)
        >>> ps = smc.change(jax.random.key(3), ps, tempered, (0.5, ys))
        >>> lik = jax.vmap(lambda mu: jnp.sum(jax.scipy.stats.norm.logpdf(ys, mu, 1.0)))(ps.traces.choices["mu"])
        >>> bool(jnp.allclose(ps.log_weights, 0.5 * lik, atol=1e-4))   # weight: p_0.5 / p_0
        True
    """
    obs = as_choicemap(observations)
    args = tuple(args)
    paths = _addresses(obs)
    keep = ~select(*paths) if paths else None

    def one(k, tr):
        ch = tr.choices if translate is None else translate(tr.choices)
        if keep is not None:
            ch = ch.filter(keep)
        new, w = model.generate(k, ch | obs, *args)
        return new, w - tr.score

    n = ps.n_particles
    (traces, w), flags, copies = particle_map(one, n, (sharding.lanes(key, n), ps.stored_traces),
                                              (LANE_FLAGS, ps.leaf_axes()), (None, ps.leaf_copies()))
    return _collect(ps, traces, flags, copies, w, n)


# ------------------------------------------------------------------------------ staged public API
# Each step is compiled once per static configuration (model, proposal, kernel, scheme, sizes) and
# argument structure, so calling the steps eagerly from Python is fast; inside the user's own
# jit/vmap they trace inline as usual.
_init_s = staged(("model", "n_particles", "proposal"), ("args", "proposal_args"))(
    lambda key, model, args, observations, n_particles, proposal, proposal_args: _init_impl(
        key, model, args, observations, n_particles, proposal, proposal_args))
_extend_s = staged(("proposal",), ("args", "proposal_args"))(
    lambda key, ps, args, observations, proposal, proposal_args: _extend_impl(
        key, ps, args, observations, proposal, proposal_args))
_resample_s = staged(("resampling",))(lambda key, ps, resampling: _resample_impl(key, ps, resampling))
_resample_if_s = staged(("resampling",))(
    lambda key, ps, ess_threshold, resampling: _resample_if_impl(key, ps, ess_threshold, resampling))
_rejuvenate_s = staged(("kernel",))(lambda key, ps, kernel: _rejuvenate_impl(key, ps, kernel))
_change_s = staged(("model", "translate"), ("args",))(
    lambda key, ps, model, args, observations, translate: _change_impl(key, ps, model, args, observations, translate))


def init(key, model, args, observations, n_particles: int, proposal=None, proposal_args=()):
    from ppl.core import as_args_tuple

    return _init_s(key, model=model, args=as_args_tuple(args, "smc.init"), observations=as_choicemap(observations),
                   n_particles=check_n_particles(n_particles, "smc.init"), proposal=proposal,
                   proposal_args=as_args_tuple(proposal_args, "smc.init", "proposal_args"))


def extend(key, ps: ParticleCollection, args, observations=None, proposal=None, proposal_args=()):
    from ppl.core import as_args_tuple

    return _extend_s(key, ps=ps, args=as_args_tuple(args, "smc.extend"), observations=as_choicemap(observations),
                     proposal=proposal, proposal_args=as_args_tuple(proposal_args, "smc.extend", "proposal_args"))


@renamed_kwargs("smc.resample", scheme="resampling")
def resample(key, ps: ParticleCollection, resampling: str = DEFAULT_RESAMPLING):
    return _resample_s(key, ps=ps, resampling=check_resampling(resampling, "smc.resample"))


@renamed_kwargs("smc.resample_if", scheme="resampling", ess_fraction="ess_threshold")
def resample_if(key, ps: ParticleCollection, ess_threshold: float = 0.5, resampling: str = DEFAULT_RESAMPLING):
    return _resample_if_s(key, ps=ps, ess_threshold=jnp.float32(ess_threshold),
                          resampling=check_resampling(resampling, "smc.resample_if"))


def rejuvenate(key, ps: ParticleCollection, kernel):
    return _rejuvenate_s(key, ps=ps, kernel=kernel)


def change(key, ps: ParticleCollection, model, args, observations=None, translate=None):
    from ppl.core import as_args_tuple

    return _change_s(key, ps=ps, model=model, args=as_args_tuple(args, "smc.change"), observations=as_choicemap(observations),
                     translate=translate)


for _pub, _impl in [(init, _init_impl), (extend, _extend_impl), (resample, _resample_impl),
                    (resample_if, _resample_if_impl), (rejuvenate, _rejuvenate_impl), (change, _change_impl)]:
    _pub.__doc__, _impl.__doc__ = _impl.__doc__, None
