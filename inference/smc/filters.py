"""Particle filters for ``ppl.scan`` state-space models, one ``lax.scan`` under ``jit``.

The filter runs the scan's *step* generative function through the GFI inside its own
``lax.scan`` over time (``ppl.scan``'s ``update`` cannot change the number of steps). At step
``t`` every particle's carry is extended with ``step.generate(key, obs_t, carry, x_t)`` (bootstrap:
the weight is the likelihood of ``obs_t``), or with a guided proposal
``proposal.simulate(key, carry, x_t, obs_t)`` whose choices are scored by
``step.generate(key, obs_t | q.choices, carry, x_t)`` minus ``log q``. Resampling happens before
step ``t > 0`` when the ESS is below ``ess_threshold * N`` (``1.0``: every step).

The particle axis uses lane keys (:mod:`ppl.keys`): all particles draw a site's random numbers
from one key, so the compiled filter does the same work as a hand-written one.

Example (genealogy tracing of stored ancestors; see :func:`particle_filter` for a filter run):
    >>> import jax.numpy as jnp
    >>> genealogy({"x": jnp.array([[0.0, 1.0], [2.0, 3.0]])}, jnp.array([[0, 1], [0, 0]]))["x"].tolist()
    [[0.0, 2.0], [0.0, 3.0]]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ppl import keys as pkeys
from ppl.combinators import ScanGF
from ppl.core import address_hash
from ppl.sitekeys import keyed_addresses
from ppl.tracing import GenFn
from ppl.errors import ModelError, ShapeError

from .. import sharding
from ._util import as_choicemap, check_alive, check_n_particles, staged
from .particles import gather
from .resampling import (DEFAULT_RESAMPLING, check_resampling, ess_from_normalized, log_evidence, log_normalize,
                         resample_indices, resample_step)

__all__ = ["FilterResult", "particle_filter", "run_filter", "check_ssm", "step_slices", "genealogy", "trace_back",
           "broadcast_carry", "propagate", "latent_part"]


@dataclasses.dataclass(eq=False)
class FilterResult:
    """Output of :func:`particle_filter` (a pytree; every per-step field has a leading time axis).

    - ``choices``: the step's latent choices (fully observed addresses are left out) per time and
      particle, leaves ``(T, N, ...)``, before the resampling of the next step (filtering
      particles);
    - ``log_weights``: ``(T, N)`` filtering log weights (normalized at resampling steps);
    - ``ancestors``: ``(T, N)`` index of each particle's parent at ``t - 1`` (identity at t=0);
    - ``carries``: the carry after each step, leaves ``(T, N, ...)``;
    - ``ess``: ``(T,)`` ESS after each step's weighting; ``resampled``: ``(T,)`` flags;
    - ``log_z``: log Z-hat; ``log_z_steps``: ``(T,)`` running log Z-hat after each step;
    - ``all_dead``: True if at some step every particle had weight zero (then log Z-hat = -inf).
    """

    choices: Any
    log_weights: Any
    ancestors: Any
    carries: Any
    ess: Any
    resampled: Any
    log_z: Any
    log_z_steps: Any
    all_dead: Any

    def log_marginal_likelihood(self):
        """log Z-hat, the log of an unbiased estimate of ``p(observations)``."""
        return self.log_z

    @property
    def final_log_weights(self):
        return self.log_weights[-1]

    def filtered_mean(self, fn=None):
        """``E[fn(choices_t) | y_{1:t}]`` for every ``t`` (default: each choice), shape ``(T, ...)``.

        Example:
            >>> import jax, jax.numpy as jnp, ppl
            >>> from inference import smc
            >>> @ppl.gen
            ... def step(x, _):
            ...     x = ppl.normal(x, 1.0) @ "x"
            ...     ppl.normal(x, 1.0) @ "y"
            ...     return x, None
            >>> obs = ppl.ChoiceMap({"y": jnp.ones(5)})
            >>> res = smc.particle_filter(jax.random.key(0), ppl.scan(step, length=5), (0.0, None), obs, 100)
            >>> res.filtered_mean(lambda ch: ch["x"]).shape
            (5,)
        """
        return _filtered_mean(_identity if fn is None else fn, self.log_weights, self.choices)

    @jax.jit
    def trajectories(self):
        """Genealogy tracing: every final particle's full path, leaves ``(N, T, ...)``.

        With the final ``log_weights`` these are weighted draws from the smoothing distribution
        (the genealogy smoother; paths coalesce for long series).
        """
        return genealogy(self.choices, self.ancestors)

    @jax.jit
    def sample_trajectory(self, key):
        """One trajectory (leaves ``(T, ...)``) drawn by the final weights through the genealogy."""
        b = resample_indices(key, self.log_weights[-1], "multinomial", n_out=1)[0]
        return trace_back(self.choices, self.ancestors, b)


jax.tree_util.register_dataclass(
    FilterResult,
    data_fields=[f.name for f in dataclasses.fields(FilterResult)],
    meta_fields=[],
)


def _identity(x):
    return x


@jax.jit(static_argnums=(0,))
def _filtered_mean(fn, log_weights, choices):
    w = jnp.exp(log_normalize(log_weights)[0])  # (T, N)
    vals = jax.vmap(jax.vmap(fn))(choices)
    return jax.tree_util.tree_map(lambda v: jnp.einsum("tn,tn...->t...", w, v.astype(w.dtype)), vals)


def _trace_back_indices(ancestors, final_idx):
    """Indices ``(T, ...)`` of the path ending at ``final_idx`` (any shape) through ``ancestors``."""

    def body(idx, a_t):
        return a_t[idx], idx

    _, path = jax.lax.scan(body, final_idx, ancestors, reverse=True)
    return path


def trace_back(choices, ancestors, b):
    """The path (leaves ``(T, ...)``) ending at final particle ``b`` through the ancestry.

    Example:
        >>> import jax.numpy as jnp
        >>> ch = {"x": jnp.array([[0.0, 1.0], [2.0, 3.0]])}
        >>> trace_back(ch, jnp.array([[0, 1], [1, 1]]), 0)["x"].tolist()
        [1.0, 2.0]
    """
    path = _trace_back_indices(ancestors, b)  # (T,)
    return jax.tree_util.tree_map(lambda x: jax.vmap(lambda xt, i: xt[i])(x, path), choices)


@jax.jit
def genealogy(choices, ancestors):
    """Paths of all particles through the ancestry: leaves ``(T, N, ...)`` -> ``(N, T, ...)``.

    Example:
        >>> import jax.numpy as jnp
        >>> ch = {"x": jnp.array([[0.0, 1.0], [2.0, 3.0]])}
        >>> genealogy(ch, jnp.array([[0, 1], [1, 1]]))["x"].tolist()
        [[1.0, 2.0], [1.0, 3.0]]
    """
    n = jnp.shape(ancestors)[1]
    path = _trace_back_indices(ancestors, jnp.arange(n))  # (T, N)
    out = jax.tree_util.tree_map(lambda x: jax.vmap(lambda xt, i: jnp.take(xt, i, axis=0))(x, path), choices)
    return jax.tree_util.tree_map(lambda x: jnp.swapaxes(x, 0, 1), out)


def check_ssm(model, what: str):
    if not isinstance(model, ScanGF):
        raise ModelError(
            f"{what} needs a ppl.scan(step, ...) state-space model, got {getattr(model, 'name', model)!r}; "
            "build the model as ppl.scan(step, length=T) and pass (init_carry, xs) as args. For other "
            "models compose smc.init / smc.extend / smc.resample / smc.rejuvenate."
        )
    return model.step


def step_slices(model, args, observations, what):
    """``(step, carry0, xs, T, obs)`` with the observation leaves checked to have leading size T."""
    step = check_ssm(model, what)
    if len(args) != 2:
        raise ModelError(f"{what}: a ppl.scan model takes (init_carry, xs) as args, got {len(args)} args")
    carry0, xs = args
    T = model.n_steps(xs)
    obs = as_choicemap(observations)
    for path, v in obs.leaves():
        leaves = jax.tree_util.tree_leaves(v)
        for leaf in leaves:
            if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != T:
                raise ShapeError(
                    f"{what}: the observations at {path!r} have shape {jnp.shape(leaf)}; per-step "
                    f"observations need a leading time axis of size T={T} (stack them over time)."
                )
    return step, carry0, xs, T, obs


def broadcast_carry(carry0, n):
    return jax.tree_util.tree_map(lambda c: jnp.broadcast_to(jnp.asarray(c), (n,) + jnp.shape(c)), carry0)


def _lanes(key, n):
    """``n`` lane keys of ``key`` and their ``in_axes``; a :class:`ppl.keys.KeyTable` keeps its
    precomputed site keys (each a lane key of the same lanes)."""
    if isinstance(key, pkeys.KeyTable):
        ks = sharding.lanes(key.raw, n)
        table = {a: pkeys.LaneKey(v, ks.lane) for a, v in key.table.items()}
        return pkeys.KeyTable(ks, table), pkeys.KeyTable(pkeys.LANE_AXES, {a: pkeys.LANE_AXES for a in table})
    return sharding.lanes(key, n), pkeys.LANE_AXES


#: What a step's key is folded with for its resampling key: above the 31-bit range of address
#: hashes, so it is never a site's key.
RESAMPLE_DATA = 0x80000001


def step_keys(step, k, carries, x_t, obs_t, proposal=None):
    """``(resampling key, propagation key)`` of one filter step from its key ``k``.

    The resampling key is ``fold_in(k, RESAMPLE_DATA)``; the step's model is run with ``k`` itself,
    so its sites' keys are ``fold_in(k, hash(address))`` as in any ``generate``. Without a proposal
    the model's top-level addresses are known ahead (one cached abstract trace) and all these keys
    are derived by one vectorized hash, returned as a :class:`ppl.keys.KeyTable` (bit-identical to
    deriving them one by one): a step costs the random-number work of a hand-written filter.

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> @ppl.gen
        ... def step(x, _):
        ...     x = ppl.normal(x, 1.0) @ "x"
        ...     ppl.normal(x, 0.5) @ "y"
        ...     return x, None
        >>> k = jax.random.key(0)
        >>> k_res, k_prop = step_keys(step, k, jnp.zeros(4), None, ppl.ChoiceMap({"y": 0.3}))
        >>> bool(jnp.all(jax.random.key_data(k_prop.table["x"]) ==
        ...               jax.random.key_data(jax.random.fold_in(k, ppl.core.address_hash("x")))))
        True
    """
    addrs = None
    if proposal is None and isinstance(step, GenFn):
        like = (jax.tree_util.tree_map(lambda c: np.zeros(jnp.shape(c)[1:], jnp.result_type(c)), carries),
                jax.tree_util.tree_map(lambda x: np.zeros(jnp.shape(x), jnp.result_type(x)), x_t))
        addrs = keyed_addresses(step, like, obs_t)
    if not addrs:
        return jax.random.fold_in(k, RESAMPLE_DATA), k
    data = np.asarray([RESAMPLE_DATA] + [address_hash(a) for a in addrs], np.uint32)
    derived = jax.vmap(lambda h: jax.random.fold_in(k, h))(data)
    return derived[0], pkeys.KeyTable(k, {a: derived[i + 1] for i, a in enumerate(addrs)})


def propagate(step, key, carries, x_t, obs_t, n, proposal=None):
    """Extend ``n`` carries by one step: ``(choices, new_carries, log_incremental_weights)``.
    ``key`` is a key or a :class:`ppl.keys.KeyTable` of the step's site keys (:func:`step_keys`)."""
    ks, ax = _lanes(key, n)
    if proposal is None:
        def one(k, c):
            tr, w = step.generate(k, obs_t, c, x_t)
            return tr.choices, tr.retval[0], w
    else:
        def one(k, c):
            kq, kp = pkeys.fold_in(k, 1), pkeys.fold_in(k, 2)
            q = proposal.simulate(kq, c, x_t, obs_t)
            tr, w = step.generate(kp, obs_t | q.choices, c, x_t)
            return tr.choices, tr.retval[0], w - q.score
    ch, new, w = jax.vmap(one, in_axes=(ax, 0))(ks, carries)
    ch, new, w = sharding.constrain_batch((ch, new, w))
    return ch, new, jnp.broadcast_to(jnp.asarray(w, jnp.float32), (n,))


def latent_part(ch, obs):
    """Drop fully observed addresses (not masked ones) from per-particle choices."""
    from ppl.choicemap import Masked, select

    paths = [p for p, v in obs.leaves() if not isinstance(v, Masked) and p]
    return ch.filter(~select(*paths)) if paths else ch


@dataclasses.dataclass(frozen=True)
class FilterStep:
    """One time step of the particle filter, ``state, out = fs(key, state, data)`` (hashable: the
    step function of :func:`run_filter`, :mod:`inference.smc.online` and the checkpointed filter,
    so all three compute the same bits from the same per-step keys).

    ``state = (carries, log_weights, normalized, log_z, dead, t, last)``: ``normalized`` is
    ``log_normalize(log_weights)``, ``t`` the global time index of the next step and ``last`` the
    last step's ``(latent choices, ancestors)`` when ``keep_last`` (else ``()``). ``data =
    (observations, xs, t0)``: arrays stacked over a block of steps starting at time ``t0``.
    ``out`` is ``(history, ess, resampled, running log Z-hat)``, ``history`` the step's
    ``(choices, log_weights, ancestors, carries)`` when ``history`` (else ``()``). The key of time
    step ``t`` is ``fold_in(key, t)`` in every driver.
    """

    step: Any
    n: int
    proposal: Any = None
    resampling: str = DEFAULT_RESAMPLING
    ess_threshold: float = 1.0
    history: bool = False
    keep_last: bool = False

    def init(self, carry0, obs_like=None, x_like=None):
        """The state before step 0 (``obs_like``/``x_like``: one step's observations and xs,
        needed only with ``keep_last`` to size the stored choices)."""
        n = self.n
        carries0 = broadcast_carry(carry0, n)
        lw0 = jnp.zeros(n, jnp.float32)
        last = ()
        if self.keep_last:
            ch_s = jax.eval_shape(lambda: latent_part(
                propagate(self.step, jax.random.key(0), carries0, x_like, obs_like, n, self.proposal)[0], obs_like))
            last = (jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), ch_s),
                    jnp.arange(n, dtype=jnp.int32))
        return (carries0, lw0, tuple(log_normalize(lw0)), jnp.zeros((), jnp.float32), jnp.zeros((), bool),
                jnp.zeros((), jnp.int32), last)

    def __call__(self, k, state, data):
        carries, lw, normalized, log_z, dead, t, last = state
        obs, xs, t0 = data
        i = t - t0
        obs_t, x_t = jax.tree_util.tree_map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), (obs, xs))
        k_res, k_prop = step_keys(self.step, k, carries, x_t, obs_t, self.proposal)
        anc, lw, log_z, dead, need = resample_step(
            k_res, lw, log_z, dead, ess_threshold=self.ess_threshold, resampling=self.resampling, when=t > 0,
            normalized=normalized)
        carries = gather(carries, anc)
        ch, carries, w = propagate(self.step, k_prop, carries, x_t, obs_t, self.n, self.proposal)
        lw = lw + w
        lwn, lse, now_dead = log_normalize(lw)
        ch = latent_part(ch, obs_t)
        hist = (ch, lw, anc, carries) if self.history else ()
        out = (hist, ess_from_normalized(lwn, now_dead), need, log_evidence(log_z, lse, self.n))
        new = (carries, lw, (lwn, lse, now_dead), log_z, dead | now_dead, t + 1, (ch, anc) if self.keep_last else ())
        return new, out


def step_keys_scan(fs, key, state, data, length):
    """Run ``length`` steps of ``fs`` (a :class:`FilterStep`) from ``state`` in one ``lax.scan``,
    the key of global step ``t`` being ``fold_in(key, t)``; returns ``(state, stacked outputs)``."""

    def body(s, _):
        return fs(jax.random.fold_in(key, s[5]), s, data)

    return jax.lax.scan(body, state, None, length=length)


def filter_result(fs, state, outs, T):
    """The :class:`FilterResult` of a finished run of ``fs`` (final ``state``, stacked ``outs``)."""
    carries, lw, _, _, dead, _, last = state
    hist, ess, resampled, lz_steps = outs
    if fs.history:
        ch, lws, anc, cs = hist
    else:
        expand = lambda tree: jax.tree_util.tree_map(lambda x: x[None], tree)  # noqa: E731
        ch, anc = expand(last[0]), expand(last[1])
        lws, cs = lw[None], expand(carries)
    return FilterResult(ch, lws, anc, cs, ess, resampled, lz_steps[-1], lz_steps, dead)


def run_filter(key, model, args, observations, n_particles, proposal=None, resampling=DEFAULT_RESAMPLING,
               ess_threshold=1.0, history=True) -> FilterResult:
    """:func:`particle_filter` without its staging and argument checks, for use inside traced code
    (other SMC algorithms, ``jax.jit``/``vmap``): ``args`` a tuple, ``observations`` a ChoiceMap,
    ``n_particles`` a Python int and ``ess_threshold`` a Python float (``>= 1``: every step).

    Example:
        >>> import jax, jax.numpy as jnp, ppl
        >>> @ppl.gen
        ... def step(x, _):
        ...     x = ppl.normal(x, 1.0) @ "x"
        ...     ppl.normal(x, 1.0) @ "y"
        ...     return x, None
        >>> obs = ppl.ChoiceMap({"y": jnp.ones(4)})
        >>> lz = jax.jit(lambda k: run_filter(k, ppl.scan(step, length=4), (0.0, None), obs, 50).log_z)
        >>> bool(jnp.isfinite(lz(jax.random.key(0))))
        True
    """
    step, carry0, xs, T, obs = step_slices(model, args, observations, "smc.particle_filter")
    fs = FilterStep(step, int(n_particles), proposal, resampling, ess_threshold, bool(history), not history)
    sl = jax.tree_util.tree_map(lambda x: x[0], (obs, xs))
    state, outs = step_keys_scan(fs, key, fs.init(carry0, *sl), (obs, xs, 0), T)
    check_alive(state[4], "smc.particle_filter")
    return filter_result(fs, state, outs, T)


_filter_staged = staged(("model", "n_particles", "proposal", "resampling", "ess_threshold", "history"), ("args",))(
    run_filter
)


def particle_filter(key, model, args, observations, n_particles: int, proposal=None,
                    resampling: str = DEFAULT_RESAMPLING, ess_threshold: float = 1.0, history: bool = True, *,
                    checkpoint_dir: str | None = None, block_size: int = 1000,
                    keep_checkpoints: int = 3) -> FilterResult:
    """Bootstrap (or guided) particle filter for a ``ppl.scan`` model with per-step observations.

    ``args = (init_carry, xs)`` are the scan model's arguments; ``observations`` is a ChoiceMap of
    arrays stacked over time (leading axis ``T``), e.g. ``ChoiceMap({"y": ys})``. A guided
    ``proposal`` is a generative function called as ``proposal.simulate(key, carry, x_t, obs_t)``
    (``obs_t`` the step's observation ChoiceMap) whose choices cover some or all of the step's
    latent choices. Resampling by the scheme ``resampling`` (``"systematic"`` (default),
    ``"stratified"``, ``"multinomial"``, ``"residual"``, or one added with
    ``smc.register_resampling``) happens before a step when the ESS is below ``ess_threshold * N``.

    The whole filter is one ``lax.scan`` compiled once per model, proposal, ``N``, scheme and
    threshold; new observations or arguments of the same shapes do not recompile.
    ``history=False`` keeps only the last step's particles (per-step fields then have a time axis
    of length 1, except ``ess``, ``resampled`` and ``log_z_steps``), which saves memory and time
    when only the evidence or the final filtering distribution is needed: the memory of the
    compiled filter then grows with ``T`` only by the three ``(T,)`` arrays (for a stream that
    does not fit in memory use :func:`~inference.smc.filter_step_block`). The key of time step
    ``t`` is ``jax.random.fold_in(key, t)``.

    With ``checkpoint_dir`` the filter runs in blocks of ``block_size`` time steps (one compiled
    program per block) and saves its state after each block under ``checkpoint_dir`` (the
    ``keep_checkpoints`` latest; per-step outputs once, see :mod:`inference.checkpoint`); a later
    call with the same key, model shapes and settings resumes from the latest intact checkpoint,
    and the result is bit-identical to an uninterrupted run (with or without ``checkpoint_dir``).
    A different setting raises :class:`inference.checkpoint.CheckpointMismatchError`. If every
    particle dies the result's ``all_dead`` is True and log Z-hat is ``-inf`` (in ``ppl.debug()``
    mode an :class:`~inference.smc.AllParticlesDeadError` is raised).

    Example:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference import smc
        >>> @ppl.gen
        ... def step(z, _):
        ...     z = ppl.normal(z, 0.3) @ "z"
        ...     ppl.poisson(jnp.exp(z)) @ "count"
        ...     return z, None
        >>> counts = jnp.array([1, 0, 2, 3, 5, 4, 6, 8])
        >>> res = smc.particle_filter(jax.random.key(0), ppl.scan(step, length=8), (0.0, None),
        ...                           ppl.ChoiceMap({"count": counts}), 300, ess_threshold=0.5)
        >>> bool(res.resampled.sum() < 8), res.log_z_steps.shape
        (True, (8,))
    """
    from ppl.core import as_args_tuple

    check_resampling(resampling, "smc.particle_filter")
    if checkpoint_dir is not None:
        return _checkpointed(key, model, as_args_tuple(args, "smc.particle_filter"), as_choicemap(observations),
                             check_n_particles(n_particles, "smc.particle_filter"), proposal, resampling,
                             float(ess_threshold), bool(history), checkpoint_dir, block_size, keep_checkpoints)
    return _filter_staged(
        key, model=model, args=as_args_tuple(args, "smc.particle_filter"), observations=as_choicemap(observations),
        n_particles=check_n_particles(n_particles, "smc.particle_filter"), proposal=proposal, resampling=resampling,
        ess_threshold=float(ess_threshold), history=bool(history),
    )


def _checkpointed(key, model, args, observations, n, proposal, resampling, ess_threshold, history, directory,
                  block_size, keep):
    """:func:`particle_filter` as :func:`inference.checkpoint.chunked_loop` blocks of :class:`FilterStep`."""
    from ..checkpoint import chunked_loop

    if int(block_size) < 1:
        raise ValueError(f"smc.particle_filter: block_size must be >= 1, got {block_size}")
    step, carry0, xs, T, obs = step_slices(model, args, observations, "smc.particle_filter")
    fs = FilterStep(step, n, proposal, resampling, ess_threshold, history, not history)
    sl = jax.tree_util.tree_map(lambda x: x[0], (obs, xs))
    settings = {"n_particles": n, "resampling": resampling, "ess_threshold": ess_threshold, "history": history,
                "proposal": getattr(proposal, "name", None if proposal is None else type(proposal).__name__)}
    state, outs = chunked_loop(key, fs, fs.init(carry0, *sl), T, int(block_size), directory, progress=False,
                               desc="smc.particle_filter", data=(obs, xs, 0), keep=int(keep), settings=settings,
                               device_outputs=True)
    check_alive(state[4], "smc.particle_filter")
    return filter_result(fs, state, outs, T)
