"""Tempered SMC / annealed importance sampling from the prior to the posterior, and resample-move SMC.

:func:`tempered` moves particles through the targets ``pi_b(x) ∝ p(x) p(obs | x)^b`` for an
increasing schedule ``0 < b_1 < ... < b_K = 1``: reweight by ``(b_k - b_{k-1}) log p(obs | x)``,
resample when the ESS falls below ``ess_threshold * N``, then move every particle with random-walk
Metropolis-Hastings steps that leave ``pi_{b_k}`` invariant. With ``ess_threshold=0`` it is annealed
importance sampling (no resampling). ``log Z-hat`` is the sum, over resampling events and the end,
of ``log mean(w)`` of the weights accumulated since the previous event; ``Z-hat`` is unbiased.

The proposal scale (``step_size`` times a per-coordinate spread) adapts by default to an
independent *pilot* population run alongside on its own keys: a scale computed from the moving
particles themselves makes each particle's kernel depend on its own state, which breaks
invariance and biases Z-hat (``adapt="population"``, the cheaper consistent-but-biased option).
Given the pilot, every kernel applied to the main particles is a fixed pi_b-invariant MH kernel,
so Z-hat is exactly unbiased conditionally on the pilot, hence unconditionally.

The log prior and log likelihood of a particle come from the GFI alone: ``log p(x) =
generate(x).weight`` (observed sites sampled, so their density cancels) and ``log p(x, obs) =
assess(x | obs)``. Only floating-point latent choices are moved.

``checkpoint_dir=`` makes a long run resumable between temperatures (bit-identical to an
uninterrupted run, see :func:`tempered`).

:func:`resample_move` runs init / extend / adaptive resampling / rejuvenation with any MCMC kernel
over a sequence of targets (``model(*args_k)`` given ``observations_k``), for example data arriving
one batch at a time.

Examples:
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
from ppl.arguments import pack_args, unpack_args
from ppl.choicemap import Masked, select
from ppl.errors import ModelError

from .. import sharding
from ..mcmc.rw import rw_step
from ._util import as_choicemap, check_n_particles, renamed_kwargs, staged
from .particles import ParticleCollection, gather
from .resampling import ess as _ess
from .resampling import DEFAULT_RESAMPLING, check_resampling, log_normalize, resample_step
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

    Examples:
        >>> power_schedule(4, 1.0).tolist()
        [0.25, 0.5, 0.75, 1.0]
    """
    return (jnp.arange(1, n_temps + 1, dtype=jnp.float32) / n_temps) ** power


def _obs_selection(obs):
    paths = [p for p, v in obs.leaves() if not isinstance(v, Masked)]
    return ~select(*paths) if paths else None


ADAPT_MODES = ("pilot", "population", "none")


def _adapt_mode(adapt, where):
    if adapt is None or adapt is False:
        return "none"
    if adapt is True:
        return "pilot"
    if isinstance(adapt, str) and adapt in ADAPT_MODES:
        return adapt
    raise ModelError(
        f"{where}: adapt={adapt!r} is not a random-walk scale mode; pass adapt='pilot' (default: scale from an "
        "independent pilot population, Z-hat unbiased), adapt='population' (scale from the moving particles "
        "themselves: consistent but Z-hat biased at finite N) or adapt='none' / False (fixed scale step_size)")


def _spread(lat, lw):
    """Per-coordinate weighted standard deviation of the floating-point latent leaves (+1e-6)."""
    w = jnp.exp(log_normalize(lw)[0])

    def one(x):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.zeros(x.shape[1:], x.dtype)
        m = jnp.tensordot(w, x, axes=1)
        return jnp.sqrt(jnp.tensordot(w, (x - m) ** 2, axes=1)) + 1e-6

    return jax.tree_util.tree_map(one, lat)


def _init_pop(model, args, obs, k, n):
    """``n`` particles from the prior: (latents, log prior, log likelihood, log weights, log Z-hat
    accumulated at resampling events)."""
    latent_sel = _obs_selection(obs)
    traces, ll = jax.vmap(lambda k: model.generate(k, obs, *args), in_axes=(pkeys.LANE_AXES,))(sharding.lanes(k, n))
    traces, ll = sharding.constrain_batch((traces, ll))
    lat = jax.vmap(lambda tr: tr.choices.filter(latent_sel) if latent_sel is not None else tr.choices)(traces)
    return lat, traces.score - ll, ll, jnp.zeros(n, jnp.float32), jnp.zeros((), jnp.float32)


def _reweight_resample(pop, beta, beta_prev, k, thr, resampling):
    """Reweight to ``beta``; if the ESS is below ``thr * n``, fold the mean weight into log Z and resample."""
    lat, lp, ll, lw, log_z = pop
    lw = lw + (beta - beta_prev) * ll
    anc, lw, log_z, _, _ = resample_step(k, lw, log_z, ess_threshold=thr, resampling=resampling)
    lat, lp, ll = gather((lat, lp, ll), anc)
    return lat, lp, ll, lw, log_z


def _move(model, args, obs, pop, beta, scale, k, step_size, n_mcmc):
    """``n_mcmc`` random-walk MH sweeps, each leaving ``p(x) p(obs | x)^beta`` invariant for a fixed ``scale``."""
    lat, lp, ll, lw, log_z = pop
    n = lw.shape[0]

    def tempered_target(k, x):
        joint, _ = model.assess(x | obs, *args)
        _, lp_x = model.generate(k, x, *args)
        ll_x = joint - lp_x
        return lp_x + beta * ll_x, (lp_x, ll_x)

    def mh(carry, km):
        lat, lp, ll = carry

        def one(k, lat_i, lp_i, ll_i):
            (lat_i, _, (lp_i, ll_i)), info = rw_step(k, tempered_target, lat_i, step_size, scale,
                                                     (lp_i + beta * ll_i, (lp_i, ll_i)))
            return (lat_i, lp_i, ll_i), info.accepted

        (lat, lp, ll), acc = jax.vmap(one)(jax.random.split(km, n), lat, lp, ll)
        return (lat, lp, ll), jnp.mean(acc.astype(jnp.float32))

    (lat, lp, ll), accs = jax.lax.scan(mh, (lat, lp, ll), jax.random.split(k, n_mcmc))
    return (lat, lp, ll, lw, log_z), jnp.mean(accs)


def _temper(model, args, obs, n_mcmc, step_size, resampling, ess_threshold, adapt, state, beta, k):
    """One temperature: ``state = (population, pilot population or None, previous beta)`` ->
    ``(state at beta, (ESS, mean acceptance))``."""
    pop, pilot, beta_prev = state
    k_res, k_mh, kp_res, kp_mh = jax.random.split(k, 4)
    if adapt == "pilot":
        # The pilot population runs its own (population-adapted) sampler on independent keys and
        # is never used for estimates: the main particles' kernels are fixed given the pilot.
        pilot = _reweight_resample(pilot, beta, beta_prev, kp_res, 0.5, resampling)
        scale = _spread(pilot[0], pilot[3])
        pilot, _ = _move(model, args, obs, pilot, beta, scale, kp_mh, step_size, n_mcmc)
    pop = _reweight_resample(pop, beta, beta_prev, k_res, ess_threshold, resampling)
    if adapt == "population":
        scale = _spread(pop[0], pop[3])
    elif adapt == "none":
        scale = jax.tree_util.tree_map(lambda x: jnp.ones(x.shape[1:], x.dtype), pop[0])
    pop, acc = _move(model, args, obs, pop, beta, scale, k_mh, step_size, n_mcmc)
    return (pop, pilot, beta), (_ess(pop[3]), acc)


def _start(key, model, args, observations, n_particles, adapt, n_pilot):
    """``(state before the first temperature, key of the temperatures, key of the final traces)``."""
    k_main, k_pilot = jax.random.split(key)
    k0, k_scan, k_fin = jax.random.split(k_main, 3)
    kp0, _ = jax.random.split(k_pilot)
    pop = _init_pop(model, args, observations, k0, n_particles)
    pilot = _init_pop(model, args, observations, kp0, n_pilot) if adapt == "pilot" else None
    return (pop, pilot, jnp.zeros((), jnp.float32)), k_scan, k_fin


def _finish(k_fin, model, args, observations, n_particles, pop, betas, ess, acc):
    """The :class:`TemperedResult` of the population after the last temperature."""
    lat, _, _, lw, log_z = pop
    final, _ = jax.vmap(lambda k, l: model.generate(k, l | observations, *args), in_axes=(pkeys.LANE_AXES, 0))(
        sharding.lanes(k_fin, n_particles), lat)
    dead = log_normalize(lw)[2]
    return TemperedResult(ParticleCollection(final, lw, log_z, dead), betas, ess, acc)


def _tempered(key, model, args, observations, n_particles, betas, n_mcmc, step_size, resampling, ess_threshold,
              adapt, n_pilot):
    state0, k_scan, k_fin = _start(key, model, args, observations, n_particles, adapt, n_pilot)

    def body(state, inp):
        return _temper(model, args, observations, n_mcmc, step_size, resampling, ess_threshold, adapt, state, *inp)

    betas = jnp.asarray(betas, jnp.float32)
    (pop, _, _), (ess, acc) = jax.lax.scan(body, state0, (betas, jax.random.split(k_scan, betas.shape[0])))
    return _finish(k_fin, model, args, observations, n_particles, pop, betas, ess, acc)


_tempered_staged = staged(("model", "n_particles", "n_mcmc", "resampling", "adapt", "n_pilot"),
                          ("args",))(_tempered)
_start_staged = staged(("model", "n_particles", "adapt", "n_pilot"), ("args",))(_start)
_finish_staged = staged(("model", "n_particles"), ("args",))(_finish)


@dataclasses.dataclass(frozen=True)
class _TemperStep:
    """One temperature as a step of :func:`inference.checkpoint.chunked_loop` (hashable: one
    compiled block per model and settings). ``state = (population, pilot, previous beta, index)``,
    ``data = (packed args, observations, betas, per-temperature keys, step_size, ess_threshold)``;
    temperature ``i`` uses ``betas[i]`` and ``keys[i]`` (the loop's own per-step key is unused),
    so a checkpointed run computes the bits of the one-scan :func:`tempered`."""

    model: Any
    n_mcmc: int
    resampling: str
    adapt: str
    mesh: Any = None

    def __call__(self, _key, state, data):
        packed, obs, betas, keys, step_size, ess_threshold = data
        pop, pilot, beta_prev, i = state
        (pop, pilot, beta), out = _temper(self.model, unpack_args(packed), obs, self.n_mcmc, step_size,
                                          self.resampling, ess_threshold, self.adapt, (pop, pilot, beta_prev),
                                          betas[i], keys[i])
        return (pop, pilot, beta, i + 1), out


def _checkpointed(key, model, args, observations, n, betas, n_mcmc, step_size, resampling, ess_threshold, adapt,
                  n_pilot, directory, block_size, keep):
    """:func:`tempered` as :func:`inference.checkpoint.chunked_loop` blocks of :class:`_TemperStep`."""
    from ..checkpoint import chunked_loop, fingerprint

    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ModelError(f"smc.tempered: block_size={block_size!r} must be an integer >= 1 (the number of "
                         "temperatures between checkpoints)")
    state0, k_scan, k_fin = _start_staged(key, model=model, args=args, observations=observations, n_particles=n,
                                          adapt=adapt, n_pilot=n_pilot)
    keys = jax.random.split(k_scan, betas.shape[0])
    settings = {"model": getattr(model, "name", type(model).__name__), "n_particles": n, "n_pilot": n_pilot,
                "n_mcmc": n_mcmc, "resampling": resampling, "adapt": adapt, "step_size": float(step_size),
                "ess_threshold": float(ess_threshold), "betas": [float(b) for b in betas.tolist()],
                "data_sha256": fingerprint((pack_args(args), observations))}
    step = _TemperStep(model, n_mcmc, resampling, adapt, sharding.active_mesh())
    state, (ess, acc) = chunked_loop(
        key, step, (*state0, jnp.zeros((), jnp.int32)), int(betas.shape[0]), block_size, directory,
        progress=False, desc="smc.tempered",
        data=(pack_args(args), observations, betas, keys, jnp.float32(step_size), jnp.float32(ess_threshold)),
        keep=int(keep), settings=settings, device_outputs=True)
    return _finish_staged(k_fin, model=model, args=args, observations=observations, n_particles=n, pop=state[0],
                          betas=betas, ess=jnp.asarray(ess), acc=jnp.asarray(acc))


def tempered(key, model, args, observations, n_particles: int, betas=None, n_temps: int = 20, n_mcmc: int = 2,
             step_size: float = 0.5, resampling: str = DEFAULT_RESAMPLING, ess_threshold: float = 0.5,
             adapt="pilot", n_pilot: int | None = None, *, checkpoint_dir: str | None = None, block_size: int = 1,
             keep_checkpoints: int = 3) -> TemperedResult:
    """Tempered SMC from the prior to the posterior of ``model(*args)`` given ``observations``.

    ``betas`` is the increasing temperature schedule ending at 1 (default
    ``power_schedule(n_temps)``); at each temperature the particles are reweighted, resampled when
    the ESS falls below ``ess_threshold * n_particles`` (by the scheme ``resampling``, default
    ``"systematic"``), then moved by ``n_mcmc`` random-walk MH
    sweeps that leave the tempered target invariant. Returns a :class:`TemperedResult` whose
    ``particles.log_marginal_likelihood()`` estimates ``log p(observations)``; its exponential,
    Z-hat, is unbiased for every ``adapt`` mode except ``"population"``.

    The random-walk standard deviation of a coordinate is ``step_size`` times a per-coordinate
    ``scale``, chosen by ``adapt``:

    - ``"pilot"`` (default): the weighted spread, at the same temperature, of an independent pilot
      population of ``n_pilot`` particles (default ``min(n_particles, 1024)``) that runs alongside
      on its own keys, adapts to itself and resamples at ESS < 50%. Given the pilot, every move of the
      main particles is a fixed MH kernel, so Z-hat is exactly unbiased. Costs the pilot's moves.
    - ``"population"``: the spread of the particles being moved. Cheaper and consistent, but each
      particle then influences its own proposal, so the move is not exactly invariant and Z-hat is
      biased at finite N (about +30% at N=8, +8% at N=32 on a 3-D regression).
    - ``"none"`` (or ``False``): scale 1, i.e. ``step_size`` is the absolute proposal standard deviation.

    One ``lax.scan`` over temperatures under ``jit``; a new schedule of the same length, new data,
    a new ``step_size`` or ``ess_threshold`` do not recompile (so ``tempered`` and ``ais`` share
    one compilation).

    With ``checkpoint_dir`` the temperatures run in blocks of ``block_size`` (one compiled program
    per block) and the state (particles, pilot population, the last temperature and its index) is
    saved after each block under ``checkpoint_dir`` (the ``keep_checkpoints`` latest; the per-
    temperature ESS and acceptance once, see :mod:`inference.checkpoint`). A later call with the
    same key, schedule, data and settings resumes from the latest intact checkpoint, and the result
    is bit-identical to an uninterrupted run, with or without ``checkpoint_dir``. A different
    setting (the schedule, ``n_particles``, the observations or arguments, ...) raises
    :class:`inference.checkpoint.CheckpointMismatchError` naming it.

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference import smc
        >>> @ppl.gen
        ... def model():
        ...     mu = ppl.normal(0.0, 1.0) @ "mu"
        ...     return ppl.normal(mu, 1.0) @ "y"
        >>> out = smc.tempered(jax.random.key(0), model, (), ppl.ChoiceMap({"y": 0.5}), 300, n_temps=5, adapt=False)
        >>> exact = jax.scipy.stats.norm.logpdf(0.5, 0.0, jnp.sqrt(2.0))
        >>> bool(abs(out.log_marginal_likelihood() - exact) < 0.05)
        True

        Checkpointed every two temperatures; a second call finds the finished run and resumes it:

        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> a = smc.tempered(jax.random.key(0), model, (), ppl.ChoiceMap({"y": 0.5}), 300, n_temps=5, adapt=False,
        ...                  checkpoint_dir=d, block_size=2)
        >>> b = smc.tempered(jax.random.key(0), model, (), ppl.ChoiceMap({"y": 0.5}), 300, n_temps=5, adapt=False,
        ...                  checkpoint_dir=d, block_size=2)
        >>> bool(a.log_marginal_likelihood() == out.log_marginal_likelihood() == b.log_marginal_likelihood())
        True
    """
    n = check_n_particles(n_particles, "smc.tempered")
    mode = _adapt_mode(adapt, "smc.tempered")
    n_pilot = min(n, 1024) if n_pilot is None else check_n_particles(n_pilot, "smc.tempered", "n_pilot")
    betas = power_schedule(int(n_temps)) if betas is None else jnp.asarray(betas, jnp.float32)
    from ppl.core import as_args_tuple

    kw = dict(model=model, args=as_args_tuple(args, "smc.tempered"), observations=as_choicemap(observations),
              n_particles=n, betas=betas, n_mcmc=int(n_mcmc), step_size=jnp.float32(step_size),
              resampling=check_resampling(resampling, "smc.tempered"), ess_threshold=jnp.float32(ess_threshold),
              adapt=mode, n_pilot=n_pilot if mode == "pilot" else 0)
    if checkpoint_dir is not None:
        kw["n"] = kw.pop("n_particles")
        return _checkpointed(key, **kw, directory=checkpoint_dir, block_size=block_size, keep=keep_checkpoints)
    return _tempered_staged(key, **kw)


def ais(key, model, args, observations, n_particles: int, betas=None, n_temps: int = 20, n_mcmc: int = 2,
        step_size: float = 0.5, adapt="pilot", n_pilot: int | None = None, *, checkpoint_dir: str | None = None,
        block_size: int = 1, keep_checkpoints: int = 3) -> TemperedResult:
    """Annealed importance sampling: :func:`tempered` without resampling (same ``adapt`` modes;
    the pilot population of the default ``adapt="pilot"`` still resamples, only to estimate scales;
    same checkpointing arguments).

    Examples:
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
                    ess_threshold=0.0, adapt=adapt, n_pilot=n_pilot, checkpoint_dir=checkpoint_dir,
                    block_size=block_size, keep_checkpoints=keep_checkpoints)


# ------------------------------------------------------------------------------ resample-move
@jax.jit(static_argnames=("kernel", "n_moves", "resampling"))
def _move_j(key, ps, kernel, n_moves, ess_threshold, resampling):
    k1, k2 = jax.random.split(key)
    ps = resample_if(k1, ps, ess_threshold, resampling)
    infos = []
    for k in jax.random.split(k2, n_moves):
        ps, info = rejuvenate(k, ps, kernel)
        infos.append(info)
    return ps, infos


@renamed_kwargs("smc.resample_move", ess_fraction="ess_threshold", scheme="resampling")
def resample_move(key, model, args_seq, observations_seq, n_particles: int, kernel, n_moves: int = 1,
                  ess_threshold: float = 0.5, resampling: str = DEFAULT_RESAMPLING, proposal=None):
    """Resample-move SMC over a sequence of targets ``model(*args_seq[k])`` given ``observations_seq[k]``.

    Step 0 is importance sampling. Each later step first moves the particles on the target they
    already have: resampling adaptively (by the scheme ``resampling`` when the ESS is below
    ``ess_threshold * N``; ``ess_fraction=`` and ``scheme=`` are deprecated aliases), then ``n_moves``
    sweeps of ``kernel(key, trace) -> (trace, info)`` (any MCMC kernel for that target); then it
    extends them with ``update`` to the new arguments and observations (``observations_seq[k]``
    holds only the *new* observations), which reweights them. The last target's particles are
    therefore weighted, not moved. Each step is compiled once per shape; a Python loop drives the
    steps. Returns ``(particles, ess_history)`` (the ESS after each step's extension).

    Examples:
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
    check_resampling(resampling, "smc.resample_move")
    if len(args_seq) != len(observations_seq) or not args_seq:
        raise ValueError("resample_move: args_seq and observations_seq must be non-empty and of equal length")
    keys = jax.random.split(key, 2 * len(args_seq))
    ps = init(keys[0], model, tuple(args_seq[0]), observations_seq[0], int(n_particles))
    ess_hist = [ps.ess()]
    for k in range(1, len(args_seq)):
        ps, _ = _move_j(keys[2 * k], ps, kernel, int(n_moves), jnp.float32(ess_threshold), resampling)
        ps = extend(keys[2 * k + 1], ps, tuple(args_seq[k]), observations_seq[k], proposal)
        ess_hist.append(ps.ess())
    return ps, jnp.stack(ess_hist)
