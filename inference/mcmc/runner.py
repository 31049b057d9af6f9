"""The multi-chain runner: ``mcmc.run(key, kernel, trace, n_samples, n_chains, burn_in, thin)``.

Chains are ``vmap``ped; each chain is a ``lax.scan`` over kernel steps inside ``jax.jit``,
compiled once per kernel and shapes (a second call with new data values of the same shapes does
not recompile). The kernel's key at global step ``t`` is ``fold_in(chain_key, t)``, so results do
not depend on how the run is split into chunks: with ``progress=True`` (or automatically for long
runs) the compiled loop runs in chunks with a tqdm progress bar between them.

Only the choices are collected (``res.choices[addr]`` has shape ``(n_chains, n_samples,
*site_shape)``), never copies of the model's arguments.

Example:
    >>> import jax, jax.numpy as jnp, ppl
    >>> from inference import mcmc
    >>> @ppl.gen
    ... def model(ys):
    ...     mu = ppl.normal(0.0, 1.0) @ "mu"
    ...     ppl.normal(jnp.full(ys.shape, mu), 1.0) @ "ys"
    >>> ys = jnp.array([0.5, 1.0, 1.5])
    >>> tr, _ = model.generate(jax.random.key(0), ppl.ChoiceMap({"ys": ys}), ys)
    >>> res = mcmc.run(jax.random.key(1), mcmc.mh(ppl.select("mu")), tr, 500, n_chains=2, burn_in=100)
    >>> res.choices["mu"].shape, res.acceptance_rate().shape
    ((2, 500), (2,))
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ppl.choicemap import ChoiceMap, Masked
from ppl.core import Trace, pack_args, unpack_args
from ppl.errors import NonFiniteError, fmt_addr

from ..sharding import active_mesh, constrain_batch
from .base import Kernel

__all__ = ["run", "sample", "init_chains", "MCMCResult"]


def _strong(tree):
    return jax.tree_util.tree_map(lambda x: jax.lax.convert_element_type(x, jnp.result_type(x)), tree)


def _trace_axes(trace, axis):
    """vmap axes for a trace: ``axis`` for every field except the model's arguments (shared)."""
    fields = {f.name: (None if f.name == "packed_args" else axis)
              for f in dataclasses.fields(trace) if f.name != "gf"}
    return dataclasses.replace(trace, **fields)


def _match(new, old):
    return jax.tree_util.tree_map(lambda a, b: jax.lax.convert_element_type(a, jnp.result_type(b)), new, old)


def _steps(kernel, key, t0, trace, state, n, thin, collect):
    """``n`` draws (each ``thin`` kernel steps) of one chain, from global step ``t0``."""

    def one(carry, t):
        tr, st = carry
        tr2, st2, info = kernel.step(jax.random.fold_in(key, t), tr, st, True)
        return (_match(tr2, tr), _match(st2, st)), info

    def draw(carry, j):
        ts = t0 + j * thin + jnp.arange(thin)
        carry, infos = jax.lax.scan(one, carry, ts)
        info = jax.tree_util.tree_map(lambda x: x[-1], infos)
        out = (carry[0].choices, info) if collect else None
        return carry, out

    (trace, state), out = jax.lax.scan(draw, (trace, state), jnp.arange(n))
    return trace, state, out


@jax.jit(static_argnums=(0, 1, 4))
def _init_chains(kernel, n_warmup, keys, trace, batched):
    axes = _trace_axes(trace, 0 if batched else None)
    return jax.vmap(lambda k, t: _strong(kernel.init(k, t, n_warmup)), in_axes=(0, axes))(keys, trace)


@jax.jit(static_argnums=(0, 1, 2, 3, 7))
def _advance(kernel, n, thin, collect, keys, t0, trace, batched, state):
    axes = _trace_axes(trace, 0 if batched else None)

    def chain(k, tr, st):
        tr2, st2, out = _steps(kernel, k, t0, _strong(tr), st, n, thin, collect)
        return tr2, st2, out

    tr, st, out = jax.vmap(chain, in_axes=(0, axes, 0), out_axes=(_out_axes(trace), 0, 0))(keys, trace, state)
    return tr, st, out


def _chain_keys(key, n_chains):
    keys = jax.random.split(key, n_chains)
    pairs = jax.vmap(jax.random.split)(keys)
    return pairs[:, 0], pairs[:, 1]


@jax.jit(static_argnums=(0, 1, 2, 3, 4, 6, 8))
def _run_all(kernel, burn_in, n, thin, n_chains, key, batched, trace, mesh=None):
    """Init, burn-in and sampling of all chains in one compiled program (no progress bar).

    With a device ``mesh`` (``inference.sharding.batch_sharding``) the chain axis is sharded."""
    axes = _trace_axes(trace, 0 if batched else None)
    k_init, k_steps = constrain_batch(_chain_keys(key, n_chains), mesh)

    def chain(ki, ks, tr):
        st = _strong(kernel.init(ki, tr, burn_in))
        tr = _strong(tr)
        if burn_in:
            tr, st, _ = _steps(kernel, ks, 0, tr, st, burn_in, 1, False)
        tr, st, out = _steps(kernel, ks, burn_in, tr, st, n, thin, True)
        return tr, out

    return jax.vmap(chain, in_axes=(0, 0, axes), out_axes=(_out_axes(trace), 0))(k_init, k_steps, trace)


def _out_axes(trace):
    return _trace_axes(trace, 0)


def sample(key, kernel: Kernel, trace, n_samples: int, burn_in: int = 0, thin: int = 1):
    """One chain as a pure, traceable function (usable under ``jax.vmap``/``jax.jit``).

    Returns ``(choices, info, last_trace)`` with a leading draw axis of size ``n_samples``.

    Example:
        >>> import jax, ppl
        >>> from inference import mcmc
        >>> @ppl.gen
        ... def model():
        ...     return ppl.normal(0.0, 1.0) @ "x"
        >>> keys = jax.random.split(jax.random.key(0), 3)
        >>> tr = model.simulate(jax.random.key(1))
        >>> ch, info, _ = jax.vmap(lambda k: sample(k, mcmc.mh(ppl.select("x")), tr, 10))(keys)
        >>> ch["x"].shape
        (3, 10)
    """
    k_init, k_steps = jax.random.split(key)
    state = _strong(kernel.init(k_init, trace, burn_in))
    trace = _strong(trace)
    if burn_in:
        trace, state, _ = _steps(kernel, k_steps, 0, trace, state, burn_in, 1, False)
    trace, state, (choices, info) = _steps(kernel, k_steps, burn_in, trace, state, n_samples, thin, True)
    return choices, info, trace


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class MCMCResult:
    """Result of :func:`run`: ``choices`` (leaves shaped ``(n_chains, n_samples, ...)``), the
    per-kernel ``info`` (same leading axes; a tuple for combinators), and ``final_trace`` (the
    chains' last traces, batched, sharing the model's arguments) to continue from."""

    choices: ChoiceMap
    info: Any
    final_trace: Any

    @property
    def n_chains(self) -> int:
        return int(jax.tree_util.tree_leaves(self.choices)[0].shape[0])

    @property
    def n_samples(self) -> int:
        return int(jax.tree_util.tree_leaves(self.choices)[0].shape[1])

    def acceptance_rate(self):
        """Mean acceptance probability per chain: an array ``(n_chains,)`` for one kernel, a
        tuple of them (one per component) for combinators."""

        def rate(info):
            if isinstance(info, dict) and "accept_prob" in info:
                return jnp.mean(info["accept_prob"], axis=1)
            if isinstance(info, (tuple, list)):
                return tuple(rate(i) for i in info)
            return None

        return rate(self.info)

    def to_arviz(self):
        """An ArviZ ``InferenceData`` with the choices as the posterior and kernel statistics."""
        from inference.diagnostics.mcmc import to_arviz

        return to_arviz(self)

    def summary(self, **kw):
        """ArviZ summary table (mean, sd, HDI, MCSE, bulk/tail ESS, R-hat) as a DataFrame."""
        from inference.diagnostics.mcmc import summary

        return summary(self, **kw)


def _check_finite(trace, batched):
    score = np.asarray(trace.score)
    if np.all(np.isfinite(score)):
        return
    bad = _find_nonfinite(trace, ())
    where = f" at address {fmt_addr(bad)}" if bad else ""
    raise NonFiniteError(
        f"mcmc.run: the initial trace has a non-finite log density{where} (score {score.ravel()[:4]}); "
        "start from a trace with positive density, e.g. model.generate(key, observations, *args), "
        "and check that observations lie in their distributions' support."
    )


def _find_nonfinite(trace, prefix):
    subs = getattr(trace, "subtraces", None)
    if isinstance(subs, dict):
        for addr, sub in subs.items():
            if not np.all(np.isfinite(np.asarray(sub.score))):
                return _find_nonfinite(sub, prefix + (addr,)) or prefix + (addr,)
    return prefix if prefix else None


def init_chains(key, model, args: tuple, observations=None, n_chains: int = 4):
    """Independent starting traces for ``n_chains`` chains: ``model.generate`` with the
    observations, other choices from the prior; batched, sharing the model's arguments.

    Example:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def model():
        ...     x = ppl.normal(0.0, 1.0) @ "x"
        ...     ppl.normal(x, 1.0) @ "y"
        >>> trs = init_chains(jax.random.key(0), model, (), ppl.ChoiceMap({"y": 0.3}), 4)
        >>> trs.choices["x"].shape
        (4,)
    """
    observations = ChoiceMap.empty() if observations is None else observations
    tr0, _ = model.generate(key, observations, *args)

    @jax.jit
    def make(keys, obs, packed):
        args = unpack_args(packed)

        def one(k):
            tr, _ = model.generate(k, obs, *args)
            return dataclasses.replace(tr, packed_args=None)

        return jax.vmap(one)(keys)

    batched = make(jax.random.split(key, n_chains), observations, pack_args(tuple(args)))
    return dataclasses.replace(batched, packed_args=tr0.packed_args)


def run(key, kernel: Kernel, trace: Trace, n_samples: int, n_chains: int = 1, burn_in: int = 0, thin: int = 1,
        *, progress: bool | None = None, chunk_size: int | None = None) -> MCMCResult:
    """Run ``n_chains`` chains of ``kernel`` from ``trace``: ``burn_in`` steps (adaptive kernels
    adapt during them), then ``n_samples`` draws keeping every ``thin``-th state.

    ``trace`` is one trace (every chain starts from it) or a batch of traces with a leading chain
    axis (e.g. from :func:`init_chains`). ``progress`` shows a tqdm bar (default: only for runs of
    at least 5,000 steps); ``chunk_size`` is the number of steps per compiled chunk then.

    Example:
        >>> import jax, ppl
        >>> from inference import mcmc
        >>> @ppl.gen
        ... def model():
        ...     return ppl.normal(0.0, 1.0) @ "x"
        >>> res = run(jax.random.key(0), mcmc.mh(ppl.select("x")), model.simulate(jax.random.key(1)), 50, n_chains=3)
        >>> res.choices["x"].shape
        (3, 50)
    """
    if not isinstance(kernel, Kernel):
        raise TypeError(f"mcmc.run: expected an MCMC kernel (mcmc.mh, mcmc.nuts, ...), got {kernel!r}")
    if not isinstance(trace, Trace):
        raise TypeError(f"mcmc.run: expected a Trace to start from, got {type(trace).__name__}")
    n_samples, burn_in, thin = int(n_samples), int(burn_in), int(thin)
    if n_samples < 1 or burn_in < 0 or thin < 1:
        raise ValueError("mcmc.run: need n_samples >= 1, burn_in >= 0, thin >= 1")
    batched = np.ndim(trace.score) == 1
    if batched:
        c = int(np.shape(trace.score)[0])
        if n_chains not in (1, c):
            raise ValueError(f"mcmc.run: the trace holds {c} chains but n_chains={n_chains}")
        n_chains = c
    elif np.ndim(trace.score) != 0:
        raise ValueError("mcmc.run: the trace must be one trace or a batch with one leading chain axis")
    _check_finite(trace, batched)

    total = burn_in + n_samples * thin
    if progress is None:
        progress = total >= 5000
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"mcmc.{kernel.name}", unit="step")
        chunk = int(chunk_size) if chunk_size else max(1, math.ceil(total / 20))
    if not progress:
        tr, (choices, info) = _run_all(kernel, burn_in, n_samples, thin, n_chains, key, batched, trace, active_mesh())
        return MCMCResult(choices, info, tr)
    k_init, k_steps = jax.jit(_chain_keys, static_argnums=1)(key, n_chains)
    state = _init_chains(kernel, burn_in, k_init, trace, batched)
    tr = trace
    t = 0
    # burn-in, in chunks of whole steps
    left = burn_in
    while left > 0:
        n = min(left, chunk) if progress else left
        tr, state, _ = _advance(kernel, n, 1, False, k_steps, jnp.asarray(t), tr, batched, state)
        batched = True
        t += n
        left -= n
        if bar is not None:
            bar.update(n)
    outs = []
    left = n_samples
    while left > 0:
        n = min(left, max(1, chunk // thin)) if progress else left
        tr, state, out = _advance(kernel, n, thin, True, k_steps, jnp.asarray(t), tr, batched, state)
        batched = True
        outs.append(out)
        t += n * thin
        left -= n
        if bar is not None:
            bar.update(n * thin)
    if bar is not None:
        bar.close()
    if len(outs) == 1:
        choices, info = outs[0]
    else:
        choices, info = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=1), *outs)
    if not isinstance(tr, Trace) or np.ndim(tr.score) != 1:  # pragma: no cover - defensive
        raise RuntimeError("mcmc.run: internal error, chains lost their batch axis")
    return MCMCResult(choices, info, tr)
