"""Conditional SMC with ancestor sampling, particle Gibbs, and the backward-sampling smoother.

All three work on ``ppl.scan`` state-space models through the step's GFI:

- :func:`csmc`: one conditional SMC sweep (bootstrap proposal) that keeps a reference trajectory
  as the last particle. Resampling is *conditional multinomial*: at every step ``t > 0`` the
  ``N - 1`` free particles draw their ancestors i.i.d. from the normalized weights
  ``w_{t-1}`` (the reference's slot included), while the reference keeps its own ancestor (the
  reference slot at ``t - 1``), or, with ``ancestor_sampling=True`` (PGAS), an ancestor redrawn
  with weights ``w_{t-1}^i p(x_t^ref, y_t | carry_{t-1}^i)`` (``step.assess``). The new reference
  is drawn from the final weights through the genealogy. The kernel leaves the smoothing
  distribution ``p(x_{1:T} | y_{1:T})`` exactly invariant (for any ``N >= 1``; tested against
  exact Kalman backward-sampled paths). Low-variance schemes (systematic, stratified, residual)
  are not used: their conditional versions need more than fixing one index to stay exact.
- :func:`particle_gibbs`: iterated CSMC, one ``lax.scan`` over iterations under ``jit``.
- :func:`backward_sample`: forward-filtering backward-simulation (FFBSi) smoothed trajectories from
  a :class:`~inference.smc.FilterResult`.

Ancestor sampling and backward simulation assume the model is Markov in its choices: the step's
new carry is a function of the step's own choices (and ``x_t``), not of older carries (for example
``carry = state``), so that ``step.assess(choices_t, carry_{t-1}^i, x_t)`` is the whole dependence of
the future on the ancestor.

Reference trajectories are ChoiceMaps of the step's latent (unobserved) choices stacked over time.

See :func:`csmc`, :func:`particle_gibbs` and :func:`backward_sample` for examples.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

import ppl

from .._fnkey import call_with_fns
from ._util import check_n_particles, staged
from .filters import broadcast_carry, latent_part, propagate, run_filter, step_slices, trace_back
from .particles import gather
from .resampling import DEFAULT_RESAMPLING, invert_cdf, log_evidence, log_normalize, resample_step

__all__ = ["CSMCResult", "csmc", "particle_gibbs", "PGResult", "backward_sample", "csmc_sweep", "backward_paths",
           "param_model"]


@dataclasses.dataclass(eq=False)
class CSMCResult:
    """One conditional SMC sweep: the new ``reference`` (leaves ``(T, ...)``), the particle history
    (``choices`` ``(T, N, ...)`` with the old reference in slot ``N - 1``, ``log_weights`` ``(T, N)``,
    ``ancestors`` ``(T, N)``) and ``log_z`` (log Z-hat of the conditional sweep)."""

    reference: Any
    choices: Any
    log_weights: Any
    ancestors: Any
    log_z: Any


@dataclasses.dataclass(eq=False)
class PGResult:
    """Particle Gibbs chain: ``references`` (leaves ``(n_iter, T, ...)``) and ``log_z`` per iteration;
    with a ``param_kernel`` also ``params`` (the prior's choices per iteration, leaves
    ``(n_iter, ...)``) and ``info`` (the parameter kernel's info per iteration), else ``None``."""

    references: Any
    log_z: Any
    params: Any = None
    info: Any = None

    def smoothing_mean(self, fn=None, burn_in: int = 0):
        """Average of ``fn(reference)`` (default: the reference itself) over the chain after burn-in."""
        refs = jax.tree_util.tree_map(lambda x: x[burn_in:], self.references)
        vals = refs if fn is None else jax.vmap(fn)(refs)
        return jax.tree_util.tree_map(lambda v: jnp.mean(v, axis=0), vals)


for _cls in (CSMCResult, PGResult):
    jax.tree_util.register_dataclass(_cls, data_fields=[f.name for f in dataclasses.fields(_cls)], meta_fields=[])


def _ref_weight(step, key, ref_t, obs_t, carry, x_t):
    """(trace choices, new carry, bootstrap weight) of the reference step given ``carry``."""
    tr, w_joint = step.generate(key, ref_t | obs_t, carry, x_t)
    _, w_lat = step.generate(key, ref_t, carry, x_t)  # log p(latents | carry): the bootstrap proposal
    return tr.retval[0], w_joint - w_lat


def _iid_ancestors(key, lwn, m):
    """``m`` i.i.d. (unsorted) multinomial ancestor draws from normalized log weights ``lwn``.

    :func:`~inference.smc.resample_indices` with ``"multinomial"`` returns its draws *sorted*, so
    any fixed subset of them (e.g. "all but the last") is not an i.i.d. sample; conditional SMC
    needs exactly ``N - 1`` i.i.d. draws. Independent uniforms through the inverse CDF give them
    in O(m log N) without an ``m x N`` Gumbel array; zero weights are never selected.
    """
    w = jnp.exp(lwn)
    u = jax.random.uniform(key, (m,))
    return invert_cdf(jnp.cumsum(w), u, w)


def csmc_sweep(key, step, carry0, xs, T, obs, reference, n, ancestor_sampling) -> CSMCResult:
    """One conditional SMC sweep on the scan step ``step`` (the traced body of :func:`csmc`).

    ``carry0``, ``xs``, ``T`` and ``obs`` are as returned by
    :func:`~inference.smc.filters.step_slices`; ``reference`` the latent choices stacked over time
    and ``n`` a Python int. For use inside traced code (other algorithms, ``jax.jit``).

    Example:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference.smc.filters import step_slices
        >>> @ppl.gen
        ... def step(x, _):
        ...     x = ppl.normal(x, 1.0) @ "x"
        ...     ppl.normal(x, 1.0) @ "y"
        ...     return x, None
        >>> sl = step_slices(ppl.scan(step, length=3), (0.0, None), ppl.ChoiceMap({"y": jnp.ones(3)}), "demo")
        >>> out = csmc_sweep(jax.random.key(0), *sl, ppl.ChoiceMap({"x": jnp.zeros(3)}), 4, True)
        >>> out.reference["x"].shape, out.ancestors.shape
        ((3,), (3, 4))
    """
    last = n - 1

    def body(state, inp):
        carries, lw, log_z = state
        t, k, obs_t, x_t, ref_t = inp
        k_res, k_as, k_prop, k_ref = jax.random.split(k, 4)

        def draw(k_res, lwn, _dead):
            # conditional multinomial resampling: the N-1 free particles draw their ancestors i.i.d.
            # from the normalized weights (the reference slot included); the reference keeps its own
            free = _iid_ancestors(k_res, lwn, n - 1)
            if ancestor_sampling:
                lp = jax.vmap(lambda c: step.assess(ref_t | obs_t, c, x_t)[0])(carries)
                logits = lwn + lp
                logits = jnp.where(jnp.isnan(logits), -jnp.inf, logits)
                a_ref = jax.random.categorical(k_as, logits).astype(jnp.int32)
            else:
                a_ref = jnp.int32(last)
            return jnp.concatenate([free, a_ref[None]])

        anc, lw, log_z, _, _ = resample_step(k_res, lw, log_z, when=t > 0, draw_ancestors=draw)
        carries = gather(carries, anc)
        ch, new_carries, w = propagate(step, k_prop, carries, x_t, obs_t, n)
        ch = latent_part(ch, obs_t)
        c_last = jax.tree_util.tree_map(lambda c: c[last], carries)
        ref_carry, w_ref = _ref_weight(step, k_ref, ref_t, obs_t, c_last, x_t)
        ch = jax.tree_util.tree_map(lambda a, r: a.at[last].set(r), ch, ref_t)
        new_carries = jax.tree_util.tree_map(lambda a, r: a.at[last].set(r), new_carries, ref_carry)
        w = w.at[last].set(w_ref)
        lw = lw + w
        return (new_carries, lw, log_z), (ch, lw, anc)

    state0 = (broadcast_carry(carry0, n), jnp.zeros(n, jnp.float32), jnp.zeros((), jnp.float32))
    k_scan, k_pick = jax.random.split(key)
    inputs = (jnp.arange(T), jax.random.split(k_scan, T), obs, xs, reference)
    (_, lw, log_z), (ch, lws, anc) = jax.lax.scan(body, state0, inputs, length=T)
    lwn, lse, _ = log_normalize(lw)
    b = jax.random.categorical(k_pick, lwn).astype(jnp.int32)
    new_ref = trace_back(ch, anc, b)
    return CSMCResult(new_ref, ch, lws, anc, log_evidence(log_z, lse, n))


def _csmc(key, model, args, observations, n_particles, reference, ancestor_sampling):
    step, carry0, xs, T, obs = step_slices(model, args, observations, "smc.csmc")
    return csmc_sweep(key, step, carry0, xs, T, obs, reference, int(n_particles), ancestor_sampling)


_csmc_staged = staged(("model", "n_particles", "ancestor_sampling"), ("args",))(_csmc)


def csmc(key, model, args, observations, n_particles: int, reference, ancestor_sampling: bool = True) -> CSMCResult:
    """One conditional SMC sweep around ``reference`` (latent choices stacked over time).

    Returns a :class:`CSMCResult` whose ``reference`` is the next state of the particle Gibbs
    chain: if ``reference`` is an exact draw of ``p(x_{1:T} | y_{1:T})`` then so is the result's
    ``reference``. The reference occupies the last particle slot at every step. Resampling is
    conditional multinomial: the ``N - 1`` free particles draw their ancestors i.i.d. from the
    normalized weights; the reference keeps its own ancestor, or with ``ancestor_sampling=True``
    one redrawn by ancestor sampling.

    Result fields: ``reference`` (the new reference, leaves ``(T, ...)``), ``choices`` (latent
    choices of every particle, leaves ``(T, N, ...)``; slot ``N - 1`` holds the old reference),
    ``log_weights`` ``(T, N)`` (each step's incremental log weights, since every step resamples),
    ``ancestors`` ``(T, N)`` int32 (parent at ``t - 1`` of each particle; identity at ``t = 0``;
    ``ancestors[t, N - 1]`` is the reference's ancestor) and ``log_z`` (log Z-hat of the
    conditional sweep, a scalar; not an unbiased evidence estimate, since the sweep is
    conditioned on the reference).

    Example:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference import smc
        >>> @ppl.gen
        ... def step(x, _):
        ...     x = ppl.normal(x, 1.0) @ "x"
        ...     ppl.normal(x, 1.0) @ "y"
        ...     return x, None
        >>> model, obs = ppl.scan(step, length=5), ppl.ChoiceMap({"y": jnp.ones(5)})
        >>> ref = ppl.ChoiceMap({"x": jnp.zeros(5)})
        >>> out = smc.csmc(jax.random.key(0), model, (0.0, None), obs, 10, ref)
        >>> out.reference["x"].shape, out.choices["x"].shape
        ((5,), (5, 10))
    """
    from ppl.core import as_args_tuple

    from ._util import as_choicemap

    return _csmc_staged(
        key, model=model, args=as_args_tuple(args, "smc.csmc"), observations=as_choicemap(observations),
        n_particles=check_n_particles(n_particles, "smc.csmc"),
        reference=as_choicemap(reference), ancestor_sampling=bool(ancestor_sampling),
    )


def _pg(key, model, args, observations, n_particles, n_iter, init_reference, ancestor_sampling, prior=None,
        args_fn=None, param_kernel=None, init_params=None, args_fn_data=()):
    if param_kernel is not None:
        # args_fn is a FnSpec (inference._fnkey): the arrays it closes over are data of the program
        return _pg_params(key, model, observations, n_particles, n_iter, init_reference, ancestor_sampling, prior,
                          args_fn.rebuild(args_fn_data), param_kernel, init_params, bool(args_fn_data))
    step, carry0, xs, T, obs = step_slices(model, args, observations, "smc.particle_gibbs")
    n = int(n_particles)
    k0, k_chain = jax.random.split(key)
    if init_reference is None:
        ref0 = _sweep_init(k0, model, args, obs, n)
    else:
        ref0 = init_reference

    def body(ref, k):
        out = csmc_sweep(k, step, carry0, xs, T, obs, ref, n, ancestor_sampling)
        return out.reference, (out.reference, out.log_z)

    _, (refs, lz) = jax.lax.scan(body, ref0, jax.random.split(k_chain, n_iter))
    return PGResult(refs, lz)


def _sweep_init(key, model, args, obs, n):
    k1, k2 = jax.random.split(key)
    res = run_filter(k1, model, args, obs, n, None, DEFAULT_RESAMPLING, 1.0, True)
    return res.sample_trajectory(k2)


@functools.lru_cache(maxsize=64)
def param_model(prior, model, args_fn):
    """The model the parameter kernel of :func:`particle_gibbs` moves: ``params ~ prior`` at address
    ``"params"`` and a ``ppl.factor`` at ``"path"`` with ``log p(path, y | args_fn(params))`` (the
    scan model's density of the latent path and observations, passed as the model's argument).
    Returns the prior's return value.

    Example:
        >>> import jax, jax.numpy as jnp, ppl
        >>> @ppl.gen
        ... def step(x, _):
        ...     x = ppl.normal(x, 1.0) @ "x"
        ...     ppl.normal(x, 1.0) @ "y"
        ...     return x, None
        >>> @ppl.gen
        ... def prior():
        ...     return ppl.normal(0.0, 1.0) @ "x0"
        >>> pm = param_model(prior, ppl.scan(step, length=2), lambda x0: (x0, None))
        >>> tr = pm.simulate(jax.random.key(0), ppl.ChoiceMap({"x": jnp.zeros(2), "y": jnp.ones(2)}))
        >>> tr.get_choices().addresses()
        [('params', 'x0')]
    """

    @ppl.gen
    def joint(path):
        theta = prior() @ "params"
        ppl.factor(model.assess(path, *args_fn(theta))[0]) @ "path"
        return theta

    return joint


def _pg_params(key, model, observations, n_particles, n_iter, init_reference, ancestor_sampling, prior, args_fn,
               kernel, init_params, fresh=False):
    from ppl.choicemap import ChoiceMap

    # a rebuilt args_fn holds traced values: keep it out of param_model's cache
    joint = (param_model.__wrapped__ if fresh else param_model)(prior, model, args_fn)
    n = int(n_particles)
    k0, k1, k2, k_chain = jax.random.split(key, 4)
    theta0 = prior.simulate(k0) if init_params is None else None
    params0 = theta0.get_choices() if init_params is None else init_params
    args0 = tuple(args_fn(prior.assess(params0)[1] if theta0 is None else theta0.get_retval()))
    step, carry0, xs, T, obs = step_slices(model, args0, observations, "smc.particle_gibbs")
    ref0 = _sweep_init(k1, model, args0, obs, n) if init_reference is None else init_reference
    constraints = ChoiceMap({"params": params0})
    tr0, _ = joint.generate(k2, constraints, ref0 | obs)
    st0 = kernel.init(k2, tr0, 0)
    match = lambda new, old: jax.tree_util.tree_map(  # noqa: E731
        lambda a, b: jax.lax.convert_element_type(a, jnp.result_type(b)), new, old)

    def body(carry, k):
        tr, st, ref = carry
        k_sweep, k_gen, k_kern = jax.random.split(k, 3)
        args = tuple(args_fn(tr.get_retval()))
        _, carry0, xs, _, _ = step_slices(model, args, obs, "smc.particle_gibbs")
        out = csmc_sweep(k_sweep, step, carry0, xs, T, obs, ref, n, ancestor_sampling)
        tr, _ = joint.generate(k_gen, tr.get_choices(), out.reference | obs)
        tr2, st2, info = kernel.step(k_kern, tr, st, False)
        tr2, st2 = match(tr2, tr), match(st2, st)
        params = tr2.get_choices().get_submap("params")
        return (tr2, st2, out.reference), (out.reference, out.log_z, params, info)

    carry0 = (tr0, jax.tree_util.tree_map(lambda x: jax.lax.convert_element_type(x, jnp.result_type(x)), st0), ref0)
    _, (refs, lz, params, info) = jax.lax.scan(body, carry0, jax.random.split(k_chain, n_iter))
    return PGResult(refs, lz, params, info)


_pg_staged = staged(("model", "n_particles", "n_iter", "ancestor_sampling", "prior", "args_fn", "param_kernel"),
                    ("args",))(_pg)


def particle_gibbs(key, model, args, observations, n_particles: int, n_iter: int, init_reference=None,
                   ancestor_sampling: bool = True, *, prior=None, args_fn=None, param_kernel=None,
                   init_params=None) -> PGResult:
    """Particle Gibbs (with ancestor sampling by default): ``n_iter`` iterated CSMC sweeps.

    The initial reference is drawn from a bootstrap particle filter unless given. Returns a
    :class:`PGResult` whose ``references`` form a Markov chain with the smoothing distribution
    ``p(x_{1:T} | y_{1:T})`` as its stationary distribution.

    **Static parameters.** With ``prior`` (a generative function over the parameters), ``args_fn``
    (``args_fn(prior_retval) -> (init_carry, xs)``, the scan model's arguments, as for
    :func:`~inference.smc.pmmh`; ``args`` is then ignored, pass ``None``) and ``param_kernel`` (any
    MCMC kernel: ``mcmc.rw(...)``, ``mcmc.hmc(...)``, ``mcmc.mh(...)``, ``mcmc.cycle(...)``...),
    every iteration alternates a CSMC sweep for the latent path given the parameters and one
    ``param_kernel`` step for the parameters given the path. The kernel moves a trace of
    :func:`param_model`: the prior's choices sit under the address ``"params"`` (select them as
    ``ppl.select("params")``, or ``ppl.select(("params", "a"))`` for one) and the path's density
    is a factor, so the chain targets ``p(theta, x_{1:T} | y_{1:T})``. ``init_params`` is an
    optional ChoiceMap of the prior's choices to start from (default: a prior draw). The
    result's ``params`` holds the prior's choices per iteration and ``info`` the kernel's infos
    (e.g. ``info.acceptance_rate``). Kernels that adapt during ``mcmc.run``'s burn-in do not
    adapt here (they start with no warm-up): give their step size. The program is compiled once
    per ``args_fn`` *code* (as for :func:`~inference.smc.pmmh`): a ``lambda`` written anew at
    every call, or one closing over new arrays of the same shapes, reuses it.

    Example:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference import smc
        >>> @ppl.gen
        ... def step(x, _):
        ...     x = ppl.normal(x, 1.0) @ "x"
        ...     ppl.normal(x, 1.0) @ "y"
        ...     return x, None
        >>> obs = ppl.ChoiceMap({"y": jnp.ones(5)})
        >>> pg = smc.particle_gibbs(jax.random.key(0), ppl.scan(step, length=5), (0.0, None), obs, 8, 20)
        >>> pg.smoothing_mean()["x"].shape
        (5,)
        >>> from inference import mcmc
        >>> @ppl.gen
        ... def drift_step(x, mu):
        ...     x = ppl.normal(x + mu, 1.0) @ "x"
        ...     ppl.normal(x, 1.0) @ "y"
        ...     return x, None
        >>> @ppl.gen
        ... def prior():
        ...     return ppl.normal(0.0, 1.0) @ "mu"
        >>> pg = smc.particle_gibbs(jax.random.key(1), ppl.scan(drift_step, length=5), None, obs, 8, 20,
        ...                         prior=prior, args_fn=lambda mu: (0.0, jnp.full(5, mu)),
        ...                         param_kernel=mcmc.rw(ppl.select("params"), 0.5, adapt=False))
        >>> pg.params["mu"].shape, pg.references["x"].shape
        ((20,), (20, 5))
    """
    from ppl.core import as_args_tuple
    from ppl.errors import ModelError

    from ._util import as_choicemap

    given = [name for name, v in (("prior", prior), ("args_fn", args_fn), ("param_kernel", param_kernel))
             if v is not None]
    if given and len(given) != 3:
        raise ModelError(
            f"smc.particle_gibbs: got {', '.join(given)} but parameter updates need all of prior, args_fn and "
            "param_kernel (e.g. param_kernel=mcmc.rw(ppl.select('params')))")
    if param_kernel is not None:
        from ..mcmc import Kernel

        if not isinstance(param_kernel, Kernel):
            raise ModelError(f"smc.particle_gibbs: param_kernel must be an MCMC kernel (mcmc.rw, mcmc.hmc, "
                             f"mcmc.mh, ...), got {param_kernel!r}")
        args = ()
    else:
        args = as_args_tuple(args, "smc.particle_gibbs")
    options = dict(
        model=model, args=args, observations=as_choicemap(observations),
        n_particles=check_n_particles(n_particles, "smc.particle_gibbs"),
        n_iter=check_n_particles(n_iter, "smc.particle_gibbs", "n_iter"), init_reference=None if init_reference is None else as_choicemap(init_reference),
        ancestor_sampling=bool(ancestor_sampling), prior=prior, param_kernel=param_kernel,
        init_params=None if init_params is None else as_choicemap(init_params),
    )
    # args_fn is keyed on its code and constants, its closed-over arrays passed as data
    # (inference._fnkey): a new lambda with the same code, or new data of the same shapes, reuses the program
    return call_with_fns(lambda args_fn: _pg_staged(key, args_fn=args_fn[0], args_fn_data=args_fn[1], **options),
                         args_fn=args_fn)


def backward_paths(key, model, args, observations, result, n_samples):
    """:func:`backward_sample` without its staging and argument checks, for use inside traced code
    (``args`` a tuple, ``observations`` a ChoiceMap, ``n_samples`` a Python int).

    Example:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference.smc.filters import run_filter
        >>> @ppl.gen
        ... def step(x, _):
        ...     x = ppl.normal(x, 1.0) @ "x"
        ...     ppl.normal(x, 1.0) @ "y"
        ...     return x, None
        >>> model, obs = ppl.scan(step, length=3), ppl.ChoiceMap({"y": jnp.ones(3)})
        >>> res = run_filter(jax.random.key(0), model, (0.0, None), obs, 20)
        >>> backward_paths(jax.random.key(1), model, (0.0, None), obs, res, 2)["x"].shape
        (2, 3)
    """
    step, carry0, xs, T, obs = step_slices(model, args, observations, "smc.backward_sample")
    if jnp.shape(result.log_weights)[0] != T:
        raise ValueError("smc.backward_sample needs a particle_filter result with history=True")

    def one(k):
        k_last, k_back = jax.random.split(k)
        b_last = jax.random.categorical(k_last, log_normalize(result.log_weights[-1])[0]).astype(jnp.int32)

        def body(b_next, inp):
            kt, t = inp
            ch_next = jax.tree_util.tree_map(lambda x: x[t + 1, b_next], result.choices)
            obs_next = jax.tree_util.tree_map(lambda x: x[t + 1], obs)
            x_next = jax.tree_util.tree_map(lambda x: x[t + 1], xs)
            carries_t = jax.tree_util.tree_map(lambda x: x[t], result.carries)
            lp = jax.vmap(lambda c: step.assess(ch_next | obs_next, c, x_next)[0])(carries_t)
            logits = log_normalize(result.log_weights[t])[0] + lp
            logits = jnp.where(jnp.isnan(logits), -jnp.inf, logits)
            b = jax.random.categorical(kt, logits).astype(jnp.int32)
            return b, b

        ts = jnp.arange(T - 1)
        _, bs = jax.lax.scan(body, b_last, (jax.random.split(k_back, T - 1), ts), reverse=True)
        idx = jnp.concatenate([bs, b_last[None]])
        return jax.tree_util.tree_map(lambda x: jax.vmap(lambda xt, i: xt[i])(x, idx), result.choices)

    return jax.vmap(one)(jax.random.split(key, n_samples))


_backward_staged = staged(("model", "n_samples"), ("args",))(backward_paths)


def backward_sample(key, model, args, observations, result, n_samples: int):
    """Forward-filtering backward-simulation: ``n_samples`` smoothed trajectories (leaves ``(M, T, ...)``).

    ``result`` is the :func:`~inference.smc.particle_filter` output (``history=True``) for the
    same model, arguments and observations. Each draw is an (approximately) exact sample of
    ``p(x_{1:T} | y_{1:T})``; unlike genealogy tracing, the draws do not collapse onto a few paths.

    Example:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference import smc
        >>> @ppl.gen
        ... def step(x, _):
        ...     x = ppl.normal(x, 1.0) @ "x"
        ...     ppl.normal(x, 1.0) @ "y"
        ...     return x, None
        >>> model, obs = ppl.scan(step, length=6), ppl.ChoiceMap({"y": jnp.ones(6)})
        >>> res = smc.particle_filter(jax.random.key(0), model, (0.0, None), obs, 50)
        >>> smc.backward_sample(jax.random.key(1), model, (0.0, None), obs, res, 4)["x"].shape
        (4, 6)
    """
    from ppl.core import as_args_tuple

    from ._util import as_choicemap

    return _backward_staged(
        key, model=model, args=as_args_tuple(args, "smc.backward_sample"), observations=as_choicemap(observations),
        result=result, n_samples=check_n_particles(n_samples, "smc.backward_sample", "n_samples"),
    )
