"""Parameter learning in state-space models: Fisher-identity gradients and Markov score climbing.

The model's arguments depend on parameters through ``args_fn(params) -> (init_carry, xs)``
(``params`` any pytree of arrays). By Fisher's identity

    grad log p(y; theta) = E_{p(x_{1:T} | y; theta)} [ grad_theta log p(x_{1:T}, y; theta) ],

so a weighted set of smoothed trajectories gives a gradient estimate: :func:`fisher_gradient`
computes ``grad_theta model.assess(path | obs, *args_fn(theta))`` for every path (genealogy tracing
with the final weights, or backward simulation) and averages. Markov score climbing (MSC) instead
follows ``grad log p(x^k, y; theta_k)`` at the state ``x^k`` of a conditional-SMC (particle Gibbs)
chain run at the current parameters; with decreasing step sizes it converges to a maximum of the
likelihood (stochastic approximation with Markovian noise), as in particle-Gibbs based learning.
:func:`fit_parameters` runs either with any optax optimizer, as one ``lax.scan`` under ``jit``.

See :func:`fisher_gradient` and :func:`fit_parameters` for examples.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from .._fnkey import call_with_fns
from ._util import as_choicemap, staged
from .csmc import backward_paths, csmc_sweep
from .filters import genealogy, run_filter, step_slices
from .resampling import DEFAULT_RESAMPLING, check_resampling, log_normalize

__all__ = ["fisher_gradient", "score_climbing_step", "fit_parameters", "ParameterFitResult"]


def _path_logp_grad(model, args_fn, params, paths, obs, weights):
    paths = jax.lax.stop_gradient(paths)

    def logp(p, path):
        return model.assess(path | obs, *args_fn(p))[0]

    grads = jax.vmap(jax.grad(logp), in_axes=(None, 0))(params, paths)
    return jax.tree_util.tree_map(lambda g: jnp.tensordot(weights, g, axes=1), grads)


def _fisher_body(key, model, args_fn, params, observations, n_particles, smoother, n_paths, resampling):
    args = tuple(args_fn(params))
    _, _, _, _, obs = step_slices(model, args, observations, "smc.fisher_gradient")
    k1, k2 = jax.random.split(key)
    res = run_filter(k1, model, args, obs, n_particles, None, resampling, 1.0, True)
    if smoother == "genealogy":
        paths = genealogy(res.choices, res.ancestors)
        w = jnp.exp(log_normalize(res.log_weights[-1])[0])
    elif smoother == "backward":
        paths = backward_paths(k2, model, args, obs, res, n_paths)
        w = jnp.full((n_paths,), 1.0 / n_paths)
    else:
        raise ValueError(f"unknown smoother {smoother!r}; use 'genealogy' or 'backward'")
    return res.log_z, _path_logp_grad(model, args_fn, params, paths, obs, w)


def _fisher(key, model, args_fn, args_fn_data, params, observations, n_particles, smoother, n_paths, resampling):
    return _fisher_body(key, model, args_fn.rebuild(args_fn_data), params, observations, n_particles, smoother, n_paths,
                   resampling)


_fisher_staged = staged(("model", "args_fn", "n_particles", "smoother", "n_paths", "resampling"))(_fisher)


def fisher_gradient(key, model, args_fn, params, observations, n_particles: int, smoother: str = "genealogy",
                    n_paths: int = 100, resampling: str = DEFAULT_RESAMPLING):
    """``(log Z-hat, gradient estimate of log p(y; params))`` by Fisher's identity over smoothed paths.

    ``smoother="genealogy"`` weights the ``N`` genealogy-traced paths by the final weights (cheap,
    degenerate for long series); ``"backward"`` draws ``n_paths`` backward-simulation paths
    (O(T N n_paths), much less degenerate). The gradient is consistent as ``N`` grows.

    Examples:
        >>> import jax, jax.numpy as jnp, optax, ppl
        >>> from inference import smc
        >>> @ppl.gen
        ... def step(carry, _):
        ...     x, a = carry
        ...     x = ppl.normal(a * x, 1.0) @ "x"
        ...     ppl.normal(x, 0.5) @ "y"
        ...     return (x, a), None
        >>> model = ppl.scan(step, length=10)
        >>> obs = ppl.ChoiceMap({"y": jnp.sin(jnp.arange(10.0))})
        >>> args_fn = lambda p: ((0.0, p["a"]), None)
        >>> lz, g = smc.fisher_gradient(jax.random.key(0), model, args_fn, {"a": 0.5}, obs, 100)
        >>> g["a"].shape, bool(jnp.isfinite(lz))
        ((), True)
    """
    options = dict(model=model, params=params, observations=as_choicemap(observations), n_particles=int(n_particles),
                   smoother=smoother, n_paths=int(n_paths),
                   resampling=check_resampling(resampling, "smc.fisher_gradient"))
    return call_with_fns(lambda args_fn: _fisher_staged(key, args_fn=args_fn[0], args_fn_data=args_fn[1], **options),
                         args_fn=args_fn)


def _msc_body(key, model, args_fn, params, observations, n_particles, reference):
    args = tuple(args_fn(params))
    step, carry0, xs, T, obs = step_slices(model, args, observations, "smc.score_climbing_step")
    out = csmc_sweep(key, step, carry0, xs, T, obs, reference, n_particles, True)
    g = _path_logp_grad(model, args_fn, params, jax.tree_util.tree_map(lambda x: x[None], out.reference), obs,
                        jnp.ones(1))
    return out.reference, out.log_z, g


def _msc(key, model, args_fn, args_fn_data, params, observations, n_particles, reference):
    return _msc_body(key, model, args_fn.rebuild(args_fn_data), params, observations, n_particles, reference)


_msc_staged = staged(("model", "args_fn", "n_particles"))(_msc)


def score_climbing_step(key, model, args_fn, params, observations, n_particles: int, reference):
    """One Markov-score-climbing step: ``(new_reference, log Z-hat, grad log p(new_reference, y; params))``.

    ``reference`` is the current conditional-SMC state (latent choices stacked over time).
    """
    options = dict(model=model, params=params, observations=as_choicemap(observations), n_particles=int(n_particles),
                   reference=as_choicemap(reference))
    return call_with_fns(lambda args_fn: _msc_staged(key, args_fn=args_fn[0], args_fn_data=args_fn[1], **options),
                         args_fn=args_fn)


@dataclasses.dataclass(eq=False)
class ParameterFitResult:
    """Output of :func:`fit_parameters`: ``params`` (final), ``history`` (parameters after every
    step, leading axis ``n_steps``), ``log_z`` (the evidence estimate at every step) and
    ``average(last)``, the mean of the last iterates (Polyak averaging).

    Not :class:`inference.vi.FitResult` (the result of ``vi.fit``); ``smc.FitResult`` is a
    deprecated alias of this class.

    Examples:
        >>> import jax.numpy as jnp
        >>> fit = ParameterFitResult({"a": 1.0}, {"a": jnp.array([0.0, 1.0, 2.0])}, jnp.zeros(3))
        >>> float(fit.average(2)["a"])
        1.5
    """

    params: Any
    history: Any
    log_z: Any

    def average(self, last: int):
        """Mean of the last ``last`` iterates of ``history`` (Polyak averaging)."""
        return jax.tree_util.tree_map(lambda h: jnp.mean(h[-last:], axis=0), self.history)


jax.tree_util.register_dataclass(ParameterFitResult, data_fields=["params", "history", "log_z"], meta_fields=[])


def deprecated_fit_result(stacklevel: int = 3):
    """The deprecated alias ``FitResult`` of :class:`ParameterFitResult`, with its warning."""
    import warnings

    warnings.warn("inference.smc.FitResult is deprecated; use inference.smc.ParameterFitResult (the same class; "
                  "not inference.vi.FitResult).", DeprecationWarning, stacklevel=stacklevel)
    return ParameterFitResult


def __getattr__(name):
    if name == "FitResult":
        return deprecated_fit_result()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _fit(key, model, args_fn, args_fn_data, params, observations, optimizer, n_steps, n_particles, method,
         smoother, n_paths):
    import optax

    # args_fn is a FnSpec (inference._fnkey; its closed-over arrays are data of the program) and
    # optimizer a structural optimizer key (_optimizer_key)
    args_fn = args_fn.rebuild(args_fn_data)
    optimizer = optimizer.template
    k0, k_loop = jax.random.split(key)
    opt_state = optimizer.init(params)
    if method == "msc":
        args = tuple(args_fn(params))
        res = run_filter(k0, model, args, observations, n_particles, None, DEFAULT_RESAMPLING, 1.0, True)
        ref0 = res.sample_trajectory(k0)
    elif method == "fisher":
        ref0 = None
    else:
        raise ValueError(f"unknown method {method!r}; use 'fisher' or 'msc'")

    def body(state, k):
        params, opt_state, ref = state
        if method == "msc":
            ref, lz, g = _msc_body(k, model, args_fn, params, observations, n_particles, ref)
        else:
            lz, g = _fisher_body(k, model, args_fn, params, observations, n_particles, smoother, n_paths,
                            DEFAULT_RESAMPLING)
        neg = jax.tree_util.tree_map(lambda x: -x, g)  # optax minimizes: ascend the log likelihood
        updates, opt_state = optimizer.update(neg, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state, ref), (params, lz)

    (params, _, _), (hist, lzs) = jax.lax.scan(body, (params, opt_state, ref0), jax.random.split(k_loop, n_steps))
    return ParameterFitResult(params, hist, lzs)


_fit_staged = staged(("model", "args_fn", "optimizer", "n_steps", "n_particles", "method", "smoother", "n_paths"))(
    _fit
)


def _optimizer_key(optimizer):
    """The optimizer keyed on its structure and hyperparameter values (the fingerprint of
    :func:`inference.vi.fit`, hyperparameters kept as compile-time constants so that results stay
    bit-identical): a fresh ``optax.adam(0.05)`` per call reuses the program; an optimizer that
    cannot be fingerprinted is keyed on its identity."""
    from ..vi.fit import optimizer_key

    return optimizer_key(optimizer)


def fit_parameters(key, model, args_fn, params, observations, optimizer, n_steps: int, n_particles: int,
                   method: str = "fisher", smoother: str = "genealogy", n_paths: int = 100) -> ParameterFitResult:
    """Maximum-likelihood parameter learning with an optax ``optimizer``; returns a :class:`ParameterFitResult`.

    ``method="fisher"``: a fresh particle filter per step and Fisher's-identity gradients over its
    smoothed paths (``smoother`` as in :func:`fisher_gradient`). ``method="msc"``: Markov score
    climbing driven by conditional SMC with ancestor sampling (cheap per step; use a decaying
    learning rate). One ``lax.scan`` under ``jit``, compiled once per ``args_fn`` *code* and
    optimizer *structure*: a ``lambda`` written anew at every call (or closing over new arrays of
    the same shapes, passed to the program as data) and a fresh ``optax.adam(lr)`` with the same
    hyperparameters reuse the program (another ``lr`` compiles another one).

    Examples:
        >>> import jax, jax.numpy as jnp, optax, ppl
        >>> from inference import smc
        >>> @ppl.gen
        ... def step(carry, _):
        ...     x, a = carry
        ...     x = ppl.normal(a * x, 1.0) @ "x"
        ...     ppl.normal(x, 0.5) @ "y"
        ...     return (x, a), None
        >>> model = ppl.scan(step, length=10)
        >>> obs = ppl.ChoiceMap({"y": jnp.sin(jnp.arange(10.0))})
        >>> fit = smc.fit_parameters(jax.random.key(0), model, lambda p: ((0.0, p["a"]), None), {"a": 0.0},
        ...                          obs, optax.adam(0.05), n_steps=20, n_particles=50, method="msc")
        >>> fit.history["a"].shape
        (20,)
    """
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32) if isinstance(x, (int, float)) else x,
                                    params)
    options = dict(model=model, params=params, observations=as_choicemap(observations),
                   optimizer=_optimizer_key(optimizer), n_steps=int(n_steps), n_particles=int(n_particles),
                   method=method, smoother=smoother, n_paths=int(n_paths))
    return call_with_fns(lambda args_fn: _fit_staged(key, args_fn=args_fn[0], args_fn_data=args_fn[1], **options),
                         args_fn=args_fn)
