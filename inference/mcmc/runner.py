"""The multi-chain runner: ``mcmc.run(key, kernel, trace, n_samples, n_chains, burn_in, thin)``.

One code path runs a chain: initialization (the kernel's state, including its warm-up schedule
of ``burn_in`` steps), then burn-in (``burn_in`` kernel steps, adaptive kernels adapt), then
sampling (``n_samples`` draws, each ``thin`` kernel steps). Burn-in and sampling are two loops of
the shared chunked driver :func:`inference.checkpoint.chunked_loop` (``vi.fit`` runs on it too),
whose step function vmaps one step over the chains; :func:`sample` runs the same step functions
for one chain as a pure, traceable function. The programs are compiled once per kernel, shapes
and chunk length (new data values of the same shapes do not recompile): the model's arguments
are the loops' data, shared by the chains, never copied per chain. The kernel's key at step
``i`` of a loop is ``k_i = fold_in(loop_key, i)`` for a one-chain run, ``fold_in(k_i, chain)`` for
each of several chains (with ``thin > 1``, a draw's ``thin`` steps use ``split(k_i, thin)``), and
the adaptation state is carried
from one chunk to the next, so with ``progress=True`` (or automatically for long runs), which
runs the loops in chunks with a tqdm bar between them, the draws and infos are bit-identical
to a run without it, whatever ``chunk_size``. With ``checkpoint_dir`` the chains' state is saved
after every chunk and a later call with the same arguments resumes from the latest intact
checkpoint, bit-identically (``n_samples`` may grow: the run continues).

**What is stored per draw.** Only the choices the kernel can move (the latents), never the
observations or the model's arguments. The kernel says which choices it moves (its
``moves(trace)``, see :mod:`inference.mcmc.base`):

- ``mh(selection)``, ``hmc``/``mala``/``nuts``: the selected choices; ``gibbs(addr)``: that site;
  ``mh(proposal)``: the addresses the proposal proposes; ``cycle``/``mixture``: the union of
  their components', ``repeat``: its kernel's;
- choices inside ``cond``/``switch``/``mix`` branches (conditionally present) are always stored,
  since any move that changes a branch draws new values for them;
- a kernel that cannot say (a custom :class:`Kernel` not overriding ``moves``): every choice
  except the addresses given as observations to :func:`init_chains` (when the run starts from
  its traces).

``res.choices[addr]`` has shape ``(n_chains, n_samples, *site_shape)`` for every stored address;
asking for one that is not stored (an observation, or a latent outside the kernel's selection,
which keeps its initial value) raises an :class:`ppl.AddressError` that says so. Those values
are kept once in ``res.fixed_choices`` (the initial trace's, with a leading chain axis when the
run started from a batch of traces) and in ``res.final_trace``.

**Warnings.** After the run, ``mcmc.run`` warns (``warnings.warn``, a :class:`UserWarning`) when
a chain accepted less than 1% of its proposals over the sampling phase, or when a kernel
reported divergent transitions (``res.divergences()`` counts them per chain), naming the kernel
and the chains.

Examples:
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
    >>> res.choices.addresses(), res.fixed_choices["ys"].shape
    (['mu'], (3,))
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ppl.choicemap import ChoiceMap
from ppl.core import Trace, as_args_tuple, pack_args, unpack_args
from ppl.sites import deterministics
from ppl.staging import gc_paused

from ..checkpoint import chunked_loop, run_chunk
from ..sharding import active_mesh, constrain_batch
from .base import Kernel, cast_like as _match, strong_types as _strong
from .draws import OBSERVED, DrawMap, Packed, collect, fixed_choices, pack, stored_selection
from .result import MCMCResult, PendingTrace
from .health import check_finite, warn_health

__all__ = ["run", "sample", "init_chains", "MCMCResult", "DrawMap"]

# acceptance rate below which mcmc.run warns that a chain is stuck


# ------------------------------------------------------- a trace's per-chain and shared parts
def _is_none(x):
    return x is None


def _split(trace):
    """``(own, shared)``: the trace with its model arguments removed, and the arguments alone
    (each a trace-shaped pytree with ``None`` in place of the other part; see ``batch_axes``)."""
    axes = trace.batch_axes(0)
    own = jax.tree_util.tree_map(lambda a, t: None if a is None else t, axes, trace, is_leaf=_is_none)
    shared = jax.tree_util.tree_map(lambda a, t: t if a is None else None, axes, trace, is_leaf=_is_none)
    return own, shared


def _merge(own, shared):
    return jax.tree_util.tree_map(lambda a, o, s: s if a is None else o, own.batch_axes(0), own, shared,
                                  is_leaf=_is_none)


# ------------------------------------------------------------------------------ the loops
@dataclasses.dataclass(frozen=True)
class _Steps:
    """The step function of both loops (hashable: one compiled chunk per kernel and settings).

    ``state, out = step(key, (own, kernel_state), shared)``: with ``thin == 0`` one kernel step
    and no output (burn-in), else one draw of ``thin`` kernel steps with output ``(choices, info)``
    (the stored choices, the last step's info); for one chain (``n_chains is None``) or vmapped
    over ``n_chains`` chains, chain ``c`` using key ``fold_in(key, c)`` (one chain held without
    its chain axis uses ``key``). ``packed``: a draw's stored choices and info leave the loop as
    one :class:`~inference.mcmc.draws.Packed` value (one array per dtype) in place of the choices,
    and ``None`` for the info (:func:`unpacked` splits them after the run)."""

    kernel: Kernel
    thin: int = 0
    stored: Any = None
    n_chains: int | None = None
    mesh: Any = None
    squeezed: bool = False
    packed: bool = False

    def __call__(self, key, state, shared):
        own, st = state
        if self.n_chains is None:
            return self._chain(key, own, st, shared)
        if self.n_chains == 1 and self.squeezed:
            # one chain held without its chain axis (see run): the step's key, no vmap of size one
            return self._chain(key, own, st, shared)
        axes = own.batch_axes(0)
        keys = jax.vmap(lambda c: jax.random.fold_in(key, c))(jnp.arange(self.n_chains, dtype=jnp.uint32))
        (own, st), out = jax.vmap(lambda k, o, s: self._chain(k, o, s, shared), in_axes=(0, axes, 0),
                                  out_axes=((axes, 0), 0))(keys, own, st)
        return constrain_batch((own, st), self.mesh), constrain_batch(out, self.mesh)

    def _chain(self, key, own, st, shared):
        tr = _merge(own, shared)
        if _positional(self.kernel):
            return self._position_chain(key, own, tr, st)

        def one(carry, k):
            tr, st = carry
            tr2, st2, info = self.kernel.step(k, tr, st, True)
            return (_match(tr2, tr), _match(st2, st)), info

        if not self.thin:
            (tr, st), _ = one((tr, st), key)
            return (_split(tr)[0], st), None
        if self.thin == 1:  # the scan's one step, without a loop of length one in the program
            (tr, st), info = one((tr, st), key)
        else:
            (tr, st), infos = jax.lax.scan(one, (tr, st), jax.random.split(key, self.thin))
            info = jax.tree_util.tree_map(lambda x: x[-1], infos)
        return (_split(tr)[0], st), self._output(self._stored(tr), info)

    def _stored(self, tr):
        return collect(tr.get_choices(), self.stored) | deterministics(tr)

    def _output(self, stored, info):
        """A draw's output ``(stored choices, info)``; ``packed``: ``(Packed, None)``, one array
        per dtype (see :func:`unpacked`)."""
        if self.packed:
            p = pack((stored, info))
            if isinstance(p, Packed):
                return p, None
        return stored, info

    def _position_chain(self, key, own, template, st):
        """:meth:`_chain` for a kernel that moves a position held in its state (see
        :func:`_positional`): the trace part of the loop state stays the starting trace (a
        loop constant, not carried), and a trace is written only for the stored choices of a
        draw (and by :func:`_realized` after the loop)."""
        def one(st, k):
            st2, info = self.kernel.position_step(k, template, st)
            return _match(st2, st), info

        if not self.thin:
            return (own, one(st, key)[0]), None
        if self.thin == 1:
            st, info = one(st, key)
        else:
            st, infos = jax.lax.scan(one, st, jax.random.split(key, self.thin))
            info = jax.tree_util.tree_map(lambda x: x[-1], infos)
        return (own, st), self._output(self._stored_at(template, st), info)

    def _stored_at(self, template, st):
        """The stored choices at the position ``st``: the moved values computed directly when the
        kernel can (``position_choices``) and the model has no deterministic sites, else read
        from the trace ``realize`` writes there (one run of the model)."""
        find = getattr(self.kernel, "position_choices", None)
        moved = None if find is None or not deterministics(template).is_empty() else find(template, st)
        if moved is None:
            return self._stored(self.kernel.realize(template, st))
        choices = template.get_choices()
        for p, v in moved.items():
            choices = choices.set(p, v)
        return collect(choices, self.stored)


def unpacked(choices, info):
    """A run's outputs ``(choices, info)`` from the loop's: a packed draw output
    ``(Packed, None)`` (see ``_Steps(packed=True)``) is split on the host."""
    if isinstance(choices, Packed):
        return choices.unpack()
    return choices, info


def _positional(kernel):
    """Whether ``kernel`` moves a position held in its state (``positional = True`` with
    ``position_step`` and ``realize``, see :mod:`inference.mcmc.base`): ``mcmc.run`` then keeps
    the starting trace as the loops' trace part and writes the final trace once, at the end."""
    return bool(getattr(kernel, "positional", False))


def _realized(kernel, own, st, shared, n_chains=None):
    """The per-chain trace part at the kernel state's position (``own`` unchanged for kernels
    that keep their trace in the loop state); vmapped over ``n_chains`` chains when given."""
    if not _positional(kernel):
        return own

    def one(o, s):
        return _split(kernel.realize(_merge(o, shared), s))[0]

    if n_chains is None:
        return one(own, st)
    axes = own.batch_axes(0)
    return jax.vmap(one, in_axes=(axes, 0), out_axes=axes)(own, st)


@jax.jit(static_argnums=(0, 1, 2))
def _finish(kernel, n_chains, squeezed, choices, info, own, st, shared):
    """After a chunked run, one program: the outputs with their chain axis first (added for a run
    ``squeezed`` without one) and the final per-chain trace part (added for a squeezed run; left to
    :func:`_final_trace` for a positional kernel)."""
    if _positional(kernel):  # the final trace is written when first read (_final_trace)
        return (*(_chain_axis if squeezed else _chains_first)((choices, info)), own)
    if squeezed:
        return _add_chain_axis(choices, info, own)
    return (*_chains_first((choices, info)), own)


def _shared_chunk(n_burn, n_samples, max_chunks=32):
    """The chunk length with which ``n_burn`` and ``n_samples`` draw steps both run in whole
    chunks (their greatest common divisor), or ``None`` if either would need more than
    ``max_chunks`` chunks."""
    c = math.gcd(n_burn, n_samples)
    return c if max(n_burn, n_samples) // c <= max_chunks else None


def _chain_axis(outputs):
    """``(n_samples, ...) -> (1, n_samples, ...)`` for every leaf of a one-chain run's outputs."""
    return jax.tree_util.tree_map(lambda x: x[None], outputs)


def _own_chain_axis(own):
    """A one-chain trace part held without its chain axis, given one (at each leaf's batch axis)."""
    def add(a, part):
        return part if a is None else jax.tree_util.tree_map(lambda leaf: jnp.expand_dims(leaf, a), part)

    return jax.tree_util.tree_map(add, own.batch_axes(0), own, is_leaf=_is_none)


@jax.jit
def _add_chain_axis(choices, info, own):
    """The outputs and final per-chain trace part of a one-chain run held without its chain axis,
    given one: ``(n_samples, ...) -> (1, n_samples, ...)``, trace leaves ``(...) -> (1, ...)``."""
    return (*_chain_axis((choices, info)), _own_chain_axis(own))


@jax.jit(static_argnums=(0, 1, 2))
def _write_final(kernel, n_chains, squeezed, own, st, shared):
    """The final per-chain trace part of a positional kernel's run, with its chain axis."""
    own = _realized(kernel, own, st, shared, None if squeezed else n_chains)
    return _own_chain_axis(own) if squeezed else own


def _final_trace(kernel, n_chains, squeezed, own, st, shared, start):
    """The run's final trace: for a positional kernel, a :class:`PendingTrace` written from the
    final state when first read (most runs only read the draws: no compile of the model's
    update for it); else the trace from the loop's state."""
    observed = OBSERVED.get(start)  # a run continued from res.final_trace knows the observations too

    def final(own):
        tr = _merge(own, shared)
        if observed is not None:
            OBSERVED[tr] = observed
        return tr

    if _positional(kernel):
        return PendingTrace(lambda *parts: final(_write_final(kernel, n_chains, squeezed, *parts)), own, st, shared)
    return final(own)


@jax.jit
def _chains_first(tree):
    """``(n_samples, n_chains, ...) -> (n_chains, n_samples, ...)`` for every leaf, in one dispatch."""
    return jax.tree_util.tree_map(lambda x: jnp.swapaxes(x, 0, 1), tree)


@jax.jit(static_argnums=(0, 1, 2, 3, 4))
def _init(kernel, n_warmup, n_chains, mesh, batched, key, own, shared):
    """``(own, kernel_state)`` of one chain (``n_chains is None``) or of every chain (vmapped;
    from one starting trace or, ``batched``, from one per chain)."""

    def one(k, o):
        tr = _merge(o, shared)
        return _split(_strong(tr))[0], _strong(kernel.init(k, tr, n_warmup))

    if n_chains is None:
        return one(key, own)
    if n_chains == 1 and not batched:  # one chain, held without a chain axis
        return one(key, own)
    axes = own.batch_axes(0)
    out = jax.vmap(one, in_axes=(0, axes if batched else None), out_axes=(axes, 0))(
        jax.random.split(key, n_chains), own)
    return constrain_batch(out, mesh)


def _phase_keys(key):
    """``(k_init, k_burn, k_draw)`` of a run: the draws' loop uses ``key`` itself (step ``i``:
    ``fold_in(key, i)``), initialization and burn-in ``fold_in(key, 2**32 - 1)`` and
    ``fold_in(key, 2**32 - 2)`` (indices no draw loop reaches). A split into three keys costs one
    more random-bits computation in every program; a derivation that is not used (an
    initialization that draws nothing, no burn-in) compiles to nothing."""
    return jax.random.fold_in(key, 0xFFFFFFFF), jax.random.fold_in(key, 0xFFFFFFFE), key


@jax.jit(static_argnums=(0, 1, 2, 3))
def _whole_run(kernel, stored, n_samples, thin, key, own, shared):
    """A one-chain run (held without its chain axis) without burn-in, progress bar or
    checkpoints as one compiled program: the phase keys, :func:`_init`, the draws' loop
    (:func:`run_chunk`, traced inline: the keys and states of :func:`chunked_loop`'s chunks) and
    the chain axis added to the outputs; one program instead of four (the first call of a short
    run is mostly compile time). Returns ``(choices, info, own, kernel state)``, the outputs with
    a chain axis; ``own`` is the final trace part with a chain axis, or for a positional kernel
    the starting one without (see :func:`_final_trace`).

    The optimization barriers keep the compiler from folding the initial state's constants (a
    fixed step size, ...) into the loop, so that the loop computes as a chunked run's programs
    do, bit for bit. (Several chains are not run this way: their vmapped loop compiled with
    the initialization differed from the chunked run's in the last bits.)"""
    k_init, _, k_draw = _phase_keys(key)
    state = jax.lax.optimization_barrier(_init(kernel, 0, 1, None, False, k_init, own, shared))
    draws = _Steps(kernel, thin, stored, 1, None, True, packed=True)
    (own, st), (choices, info) = jax.lax.optimization_barrier(run_chunk(draws, n_samples, True, k_draw, 0, state,
                                                                       shared))
    if _positional(kernel):  # the final trace is written when first read (_final_trace)
        return (*_chain_axis((choices, info)), own, st)
    return (*_add_chain_axis(choices, info, own), None)


@jax.jit(static_argnums=(0, 1, 2, 3, 4))
def _start(kernel, n_warmup, n_chains, mesh, batched, key, own, shared):
    """The phase keys ``(k_burn, k_draw)`` and the chains' initial state (:func:`_init` with
    ``k_init``), from ``key``, in one program."""
    k_init, k_burn, k_draw = _phase_keys(key)
    return k_burn, k_draw, _init(kernel, n_warmup, n_chains, mesh, batched, k_init, own, shared)


def sample(key, kernel: Kernel, trace, n_samples: int, burn_in: int = 0, thin: int = 1):
    """One chain as a pure, traceable function (usable under ``jax.vmap``/``jax.jit``).

    Returns ``(choices, info, last_trace)`` with a leading draw axis of size ``n_samples``;
    ``choices`` holds the choices the kernel moves (see the module docstring), ``last_trace`` all.
    It runs the steps of :func:`run` (one chain, no vmap over chains).

    Examples:
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
    n_samples, burn_in, thin = int(n_samples), int(burn_in), int(thin)
    stored = stored_selection(kernel, trace, False)
    k_init, k_burn, k_draw = _phase_keys(key)
    own, shared = _split(trace)
    state = _init(kernel, burn_in, None, None, False, k_init, own, shared)
    if burn_in:
        state, _ = run_chunk(_Steps(kernel), burn_in, True, k_burn, 0, state, shared)
    state, (choices, info) = run_chunk(_Steps(kernel, thin, stored), n_samples, True, k_draw, 0, state, shared)
    return choices, info, _merge(_realized(kernel, state[0], state[1], shared), shared)


@jax.jit(static_argnums=0)
def _generate_batch(model, keys, obs, packed):
    args = unpack_args(packed)
    tr = jax.eval_shape(lambda k: model.generate(k, obs, *args)[0], keys[0])
    return jax.vmap(lambda k: model.generate(k, obs, *args)[0], out_axes=tr.batch_axes(0))(keys)


def init_chains(key, model, args: tuple, observations=None, n_chains: int = 4):
    """Independent starting traces for ``n_chains`` chains: ``model.generate`` with the
    observations, other choices from the prior; batched, sharing the model's arguments.

    A run started from these traces with a kernel that cannot say which choices it moves does
    not store the ``observations`` per draw.

    Examples:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def model():
        ...     x = ppl.normal(0.0, 1.0) @ "x"
        ...     ppl.normal(x, 1.0) @ "y"
        >>> trs = init_chains(jax.random.key(0), model, (), ppl.ChoiceMap({"y": 0.3}), 4)
        >>> trs.choices["x"].shape
        (4,)
    """
    args = as_args_tuple(args, "mcmc.init_chains")
    observations = ChoiceMap.empty() if observations is None else observations
    out = _generate_batch(model, jax.random.split(key, n_chains), observations, pack_args(tuple(args)))
    if isinstance(observations, ChoiceMap):
        OBSERVED[out] = tuple(p for p, _ in observations.leaves())
    return out


def run(key, kernel: Kernel, trace: Trace, n_samples: int, n_chains: int = 1, burn_in: int = 0, thin: int = 1,
        *, progress: bool | None = None, chunk_size: int | None = None, checkpoint_dir: str | None = None,
        keep_checkpoints: int = 3) -> MCMCResult:
    """Run ``n_chains`` chains of ``kernel`` from ``trace``: ``burn_in`` steps (adaptive kernels
    adapt during them), then ``n_samples`` draws keeping every ``thin``-th state.

    ``trace`` is one trace (every chain starts from it) or a batch of traces with a leading chain
    axis (e.g. from :func:`init_chains`). ``progress`` shows a tqdm bar (default: only for runs of
    at least 5,000 steps); ``chunk_size`` is the number of steps per compiled chunk then. The
    result is bit-identical with or without the bar, whatever ``chunk_size``.

    With ``checkpoint_dir`` the chains' state is saved after every chunk (``chunk_size`` steps;
    one chunk per phase without it) under ``checkpoint_dir/burn_in`` and ``checkpoint_dir/draws``
    (the ``keep_checkpoints`` latest of each; draws are stored once), and a call with the same
    key, kernel, trace shapes, ``n_chains``, ``burn_in`` and ``thin`` resumes from the latest
    intact checkpoint, bit-identically; ``n_samples`` may grow (the run continues). A different
    setting raises :class:`inference.checkpoint.CheckpointMismatchError` naming it.

    Only the choices the kernel moves are stored per draw (see the module docstring for the
    rule); the others are in ``res.fixed_choices``. Warns when a chain is stuck (acceptance rate
    below 1% during sampling) or a kernel reported divergent transitions.

    Examples:
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
    batched = np.ndim(trace.get_score()) == 1
    if batched:
        c = int(np.shape(trace.get_score())[0])
        if n_chains not in (1, c):
            raise ValueError(f"mcmc.run: the trace holds {c} chains but n_chains={n_chains}")
        n_chains = c
    elif np.ndim(trace.get_score()) != 0:
        raise ValueError("mcmc.run: the trace must be one trace or a batch with one leading chain axis")
    n_chains = int(n_chains)
    check_finite(trace)
    stored = stored_selection(kernel, trace, batched, OBSERVED.get(trace, ()))
    fixed = fixed_choices(trace, stored)

    total = burn_in + n_samples * thin
    if progress is None:
        progress = total >= 5000
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"mcmc.run: chunk_size must be >= 1, got {chunk_size}")
    chunked = progress or checkpoint_dir is not None
    chunk = int(chunk_size) if chunk_size else max(1, math.ceil(total / 20))
    mesh = active_mesh()
    own, shared = _split(trace)
    squeezed = n_chains == 1 and not batched  # no vmap of size one: a smaller, faster program
    if squeezed and not chunked and not burn_in:  # one compiled program for the whole run
        with gc_paused():  # (see ppl.staging.gc_paused: a first call is mostly tracing and compiling)
            choices, info, own, st = _whole_run(kernel, stored, n_samples, thin, key, own, shared)
        choices, info = unpacked(choices, info)
        res = _result(kernel, choices, info, _final_trace(kernel, 1, True, own, st, shared, trace), fixed)
        warn_health(kernel, info)
        return res
    with gc_paused():
        k_burn, k_draw, state = _start(kernel, burn_in, n_chains, mesh, batched, key, own, shared)
    loop = dict(progress=bool(progress), data=shared, device_outputs=True, keep=keep_checkpoints,
                settings={"kernel": kernel.name, "n_chains": n_chains, "burn_in": burn_in, "thin": thin})

    def where(phase):
        return None if checkpoint_dir is None else os.path.join(checkpoint_dir, phase)

    # draws packed into one array per step, split on the host after the run: not across devices
    # or processes (the split would gather them) nor into checkpoints (their stored layout)
    packed = mesh is None and jax.process_count() == 1 and checkpoint_dir is None
    draws = _Steps(kernel, thin, stored, n_chains, mesh, squeezed, packed)
    # burn-in made of whole draw steps runs through the draws' compiled program (its outputs
    # dropped): one compile instead of two; chunk lengths chosen so that both loops share it
    whole = bool(burn_in) and burn_in % thin == 0
    if chunked:
        burn_chunk = draw_chunk = max(1, chunk // thin)
    else:
        common = _shared_chunk(burn_in // thin, n_samples) if whole else None
        burn_chunk, draw_chunk = (common, common) if common else (burn_in // thin, n_samples)
    if whole:
        state, _ = chunked_loop(k_burn, draws, state, burn_in // thin, burn_chunk,
                                where("burn_in"), desc=f"mcmc.{kernel.name} burn-in", masked=True,
                                discard_outputs=True, **loop)
    elif burn_in:
        state, _ = chunked_loop(k_burn, _Steps(kernel, 0, None, n_chains, mesh, squeezed), state, burn_in,
                                chunk if chunked else burn_in, where("burn_in"), desc=f"mcmc.{kernel.name} burn-in",
                                **loop)
    state, (choices, info) = chunked_loop(
        k_draw, draws, state, n_samples, draw_chunk, where("draws"), desc=f"mcmc.{kernel.name}", masked=whole,
        **loop)
    # the loop stacks draws first: (n_samples, n_chains, ...) -> (n_chains, n_samples, ...)
    with gc_paused():
        choices, info, own = _finish(kernel, n_chains, squeezed, choices, info, *state, shared)
    final = _final_trace(kernel, n_chains, squeezed, own, state[1], shared, trace)
    choices, info = unpacked(choices, info)
    res = _result(kernel, choices, info, final, fixed)
    warn_health(kernel, info)
    return res


def _result(kernel, choices, info, final, fixed):
    fixed_paths = tuple(p for p, _ in fixed.leaves())
    return MCMCResult(DrawMap.wrap(choices, fixed_paths), info, final, fixed, kernel)
