"""The multi-chain runner: ``mcmc.run(key, kernel, trace, n_samples, n_chains, burn_in, thin)``.

Chains are ``vmap``ped; each chain is a loop over kernel steps inside ``jax.jit``, compiled once
per kernel and shapes (a second call with new data values of the same shapes does not
recompile). A run is three compiled programs: initialization (every chain's kernel state,
including its warm-up schedule of ``burn_in`` steps), burn-in, and sampling; the loops' trip
counts are run-time values. The kernel's key at global step ``t`` is ``fold_in(chain_key, t)``
and the adaptation state is carried from one chunk to the next, so with ``progress=True`` (or
automatically for long runs), which runs the same compiled loops in chunks with a tqdm bar
between them, the draws and infos are bit-identical to a run without it, whatever ``chunk_size``.

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
    >>> res.choices.addresses(), res.fixed_choices["ys"].shape
    (['mu'], (3,))
"""

from __future__ import annotations

import dataclasses
import math
import warnings
import weakref
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ppl.choicemap import ChoiceMap, Masked, Selection, normalize_addr, select
from ppl.core import Trace, pack_args, unpack_args
from ppl.errors import AddressError, NonFiniteError, fmt_addr

from ..sharding import active_mesh, constrain_batch
from .base import Kernel
from .combinators import Cycle, Mixture, Repeat
from .kernels import MH, Gibbs, MHProposal

__all__ = ["run", "sample", "init_chains", "MCMCResult", "DrawMap"]

# Trace fields the runner treats specially: the generative function (static) and the model's
# arguments (shared by all chains, never batched or copied per chain).
_GF, _ARGS = "gf", "packed_args"

# acceptance rate below which mcmc.run warns that a chain is stuck
_STUCK = 0.01


def _strong(tree):
    return jax.tree_util.tree_map(lambda x: jax.lax.convert_element_type(x, jnp.result_type(x)), tree)


def _trace_axes(trace, axis):
    """vmap axes for a trace: ``axis`` for every field except the model's arguments (shared)."""
    fields = {f.name: (None if f.name == _ARGS else axis)
              for f in dataclasses.fields(trace) if f.name != _GF}
    return dataclasses.replace(trace, **fields)


def _out_axes(trace):
    return _trace_axes(trace, 0)


def _constrain_chains(trace, mesh):
    """Shard a batch of traces' per-chain fields over ``mesh`` (the shared arguments stay put)."""
    if mesh is None:
        return trace
    fields = {f.name: constrain_batch(getattr(trace, f.name), mesh)
              for f in dataclasses.fields(trace) if f.name not in (_GF, _ARGS)}
    return dataclasses.replace(trace, **fields)


def _match(new, old):
    return jax.tree_util.tree_map(lambda a, b: jax.lax.convert_element_type(a, jnp.result_type(b)), new, old)


# ------------------------------------------------------------------------ stored choices
_OBSERVED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # init_chains trace -> paths


def _related(p, q):
    return p[: len(q)] == q or q[: len(p)] == p


def _moved(kernel, trace, paths):
    """The leaf paths (of ``paths``) that ``kernel`` may change, or ``None`` if it cannot say."""
    if isinstance(kernel, (Cycle, Mixture)):
        parts = [_moved(k, trace, paths) for k in kernel.kernels]
        return None if any(p is None for p in parts) else set().union(*parts)
    if isinstance(kernel, Repeat):
        return _moved(kernel.kernel, trace, paths)
    if isinstance(kernel, MH):
        return {p for p in paths if kernel.selection.contains(p)}
    if isinstance(kernel, Gibbs):
        g = normalize_addr(kernel.address)
        return {p for p in paths if _related(p, g)}
    if isinstance(kernel, MHProposal):
        struct = jax.eval_shape(
            lambda k, t: kernel.proposal.simulate(k, t, *kernel.proposal_args).choices, jax.random.key(0), trace)
        proposed = [q for q, _ in struct.leaves()]
        return {p for p in paths if any(_related(p, q) for q in proposed)}
    moves = kernel.moves(trace)
    if moves is None:
        return None
    if isinstance(moves, Selection):
        return {p for p in paths if moves.contains(p)}
    addrs = [normalize_addr(a) for a in moves]
    return {p for p in paths if any(_related(p, q) for q in addrs)}


def _stored_selection(kernel, trace, batched, observed=()):
    """The selection of the choices stored per draw, or ``None`` for all of them."""

    def one(t):
        if batched:
            fields = {f.name: jax.tree_util.tree_map(lambda x: x[0], getattr(t, f.name))
                      for f in dataclasses.fields(t) if f.name not in (_GF, _ARGS)}
            t = dataclasses.replace(t, **fields)
        return t

    single = jax.eval_shape(one, trace)
    # the structure the compiled loop collects (branch choices as Masked leaves)
    leaves = jax.eval_shape(lambda t: t.choices, single).leaves()
    paths = [p for p, _ in leaves]
    if not paths or () in paths:
        return None
    moved = _moved(kernel, single, paths)
    if moved is None:
        keep = {p for p in paths if not any(_related(p, q) for q in observed)}
    else:
        keep = set(moved) | {p for p, v in leaves if isinstance(v, Masked)}
    if len(keep) == len(paths):
        return None
    return select(*sorted(keep))


def _collect(choices, stored):
    return choices if stored is None else choices.filter(stored)


@jax.tree_util.register_pytree_with_keys_class
class DrawMap(ChoiceMap):
    """The draws of :class:`MCMCResult`: a :class:`ppl.ChoiceMap` whose leaves have leading axes
    ``(n_chains, n_samples)``, holding the choices the kernel moves. Indexing an address that
    is not stored because the kernel never moves it (an observation, or a choice outside the
    kernel's selection) raises an :class:`ppl.AddressError` that says so and points to
    ``res.fixed_choices``.

    Example:
        >>> import jax, ppl
        >>> from inference import mcmc
        >>> @ppl.gen
        ... def model():
        ...     x = ppl.normal(0.0, 1.0) @ "x"
        ...     ppl.normal(x, 1.0) @ "y"
        >>> tr, _ = model.generate(jax.random.key(0), ppl.ChoiceMap({"y": 0.5}))
        >>> res = mcmc.run(jax.random.key(1), mcmc.mh(ppl.select("x")), tr, 10)
        >>> try:
        ...     res.choices["y"]
        ... except ppl.AddressError as e:
        ...     print(str(e).split(" (")[0])
        no draws at address 'y': the kernel never moves this choice
    """

    __slots__ = ("_fixed",)

    @staticmethod
    def wrap(chm: ChoiceMap, fixed=()) -> "DrawMap":
        """``chm`` as a :class:`DrawMap`; ``fixed`` are the paths of the unstored choices."""
        out = object.__new__(DrawMap)
        out._value, out._children, out._fixed = chm._value, chm._children, frozenset(fixed)
        return out

    def tree_flatten_with_keys(self):
        leaves, aux = ChoiceMap.tree_flatten(self)
        return [(jax.tree_util.SequenceKey(i), x) for i, x in enumerate(leaves)], (aux, self._fixed)

    def tree_flatten(self):
        leaves, aux = ChoiceMap.tree_flatten(self)
        return leaves, (aux, self._fixed)

    @classmethod
    def tree_unflatten(cls, aux, leaves):
        return DrawMap.wrap(ChoiceMap.tree_unflatten(aux[0], leaves), aux[1])

    def __getitem__(self, addr):
        try:
            return ChoiceMap.__getitem__(self, addr)
        except AddressError:
            path = () if addr == () else normalize_addr(addr)
            if any(_related(path, q) for q in self._fixed):
                raise AddressError(
                    f"no draws at address {fmt_addr(path)}: the kernel never moves this choice (an "
                    "observation, or a choice outside the kernel's selection), so mcmc.run does not "
                    f"store it per draw; its value is res.fixed_choices[{_external(path)!r}]"
                ) from None
            raise


def _external(path):
    return path[0] if len(path) == 1 else path


def _fixed_choices(trace, stored):
    """The initial trace's choices that are not stored per draw (``None`` if all are)."""
    if stored is None:
        return ChoiceMap.empty()
    return trace.choices.filter(~stored)


# ------------------------------------------------------------------------------ the loops
def _burn_steps(kernel, key, t0, n, trace, state):
    """``n`` kernel steps (``n`` may be a run-time value) of one chain from global step ``t0``."""

    def body(i, carry):
        tr, st = carry
        tr2, st2, _ = kernel.step(jax.random.fold_in(key, t0 + i), tr, st, True)
        return _match(tr2, tr), _match(st2, st)

    return jax.lax.fori_loop(0, n, body, (trace, state))


def _draw_steps(kernel, key, t0, n, size, thin, stored, trace, state):
    """``n <= size`` draws (each ``thin`` kernel steps) of one chain from global step ``t0``, in
    buffers of ``size`` draws: ``(trace, state, (choices, info))``."""

    def draw(tr, st, t):
        def one(carry, s):
            tr, st = carry
            tr2, st2, info = kernel.step(jax.random.fold_in(key, t + s), tr, st, True)
            return (_match(tr2, tr), _match(st2, st)), info

        (tr, st), infos = jax.lax.scan(one, (tr, st), jnp.arange(thin, dtype=jnp.int32))
        info = jax.tree_util.tree_map(lambda x: x[-1], infos)
        return tr, st, (_collect(tr.choices, stored), info)

    shapes = jax.eval_shape(lambda tr, st: draw(tr, st, t0)[2], trace, state)
    buf = jax.tree_util.tree_map(lambda s: jnp.zeros((size,) + s.shape, s.dtype), shapes)

    def body(j, carry):
        tr, st, buf = carry
        tr, st, out = draw(tr, st, t0 + j * thin)
        buf = jax.tree_util.tree_map(lambda b, o: jax.lax.dynamic_update_index_in_dim(b, o, j, 0), buf, out)
        return tr, st, buf

    return jax.lax.fori_loop(0, n, body, (trace, state, buf))


@jax.jit(static_argnums=(0, 1, 2, 5))
def _init_chains(kernel, n_warmup, mesh, keys, trace, batched):
    """Every chain's kernel state and its starting trace (batched; arguments shared)."""
    keys = constrain_batch(keys, mesh)
    axes = _trace_axes(trace, 0 if batched else None)

    def one(k, t):
        return _strong(t), _strong(kernel.init(k, t, n_warmup))

    tr, st = jax.vmap(one, in_axes=(0, axes), out_axes=(_out_axes(trace), 0))(keys, trace)
    return _constrain_chains(tr, mesh), constrain_batch(st, mesh)


@jax.jit(static_argnums=(0, 1))
def _burn(kernel, mesh, keys, t0, n, trace, state):
    axes = _out_axes(trace)
    tr, st = jax.vmap(lambda k, tr, st: _burn_steps(kernel, k, t0, n, tr, st),
                      in_axes=(0, axes, 0), out_axes=(axes, 0))(keys, trace, state)
    return _constrain_chains(tr, mesh), constrain_batch(st, mesh)


@jax.jit(static_argnums=(0, 1, 2, 3, 4))
def _draws(kernel, mesh, size, thin, stored, keys, t0, n, trace, state):
    axes = _out_axes(trace)
    tr, st, out = jax.vmap(lambda k, tr, st: _draw_steps(kernel, k, t0, n, size, thin, stored, tr, st),
                           in_axes=(0, axes, 0), out_axes=(axes, 0, 0))(keys, trace, state)
    return _constrain_chains(tr, mesh), constrain_batch(st, mesh), constrain_batch(out, mesh)


@jax.jit(static_argnums=1)
def _chain_keys(key, n_chains):
    keys = jax.random.split(key, n_chains)
    pairs = jax.vmap(jax.random.split)(keys)
    return pairs[:, 0], pairs[:, 1]


def sample(key, kernel: Kernel, trace, n_samples: int, burn_in: int = 0, thin: int = 1):
    """One chain as a pure, traceable function (usable under ``jax.vmap``/``jax.jit``).

    Returns ``(choices, info, last_trace)`` with a leading draw axis of size ``n_samples``;
    ``choices`` holds the choices the kernel moves (see the module docstring), ``last_trace`` all.

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
    n_samples, burn_in, thin = int(n_samples), int(burn_in), int(thin)
    stored = _stored_selection(kernel, trace, False)
    k_init, k_steps = jax.random.split(key)
    state = _strong(kernel.init(k_init, trace, burn_in))
    trace = _strong(trace)
    if burn_in:
        trace, state = _burn_steps(kernel, k_steps, 0, burn_in, trace, state)
    trace, state, (choices, info) = _draw_steps(kernel, k_steps, burn_in, n_samples, n_samples, thin, stored,
                                                trace, state)
    return choices, info, trace


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class MCMCResult:
    """Result of :func:`run`.

    - ``choices``: a :class:`DrawMap` of the choices the kernel moves, leaves shaped
      ``(n_chains, n_samples, *site_shape)``;
    - ``info``: the per-kernel info (same leading axes; a tuple for combinators);
    - ``final_trace``: the chains' last traces (batched, sharing the model's arguments), to
      continue from;
    - ``fixed_choices``: the choices not stored per draw (observations and unselected choices),
      once, from the initial trace (with a leading chain axis if the run started from a batch);
    - ``kernel``: the kernel that ran.
    """

    choices: ChoiceMap
    info: Any
    final_trace: Any
    fixed_choices: Any = None
    kernel: Any = dataclasses.field(default=None, metadata=dict(static=True))

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

    def divergences(self):
        """Number of divergent transitions per chain over the stored draws: an integer array
        ``(n_chains,)`` for a kernel that reports them (``hmc``, ``mala``, ``nuts``), ``None``
        for one that does not (``mh``, ``gibbs``), and for combinators a tuple shaped like
        :meth:`acceptance_rate`'s (a ``mixture`` counts a component's steps only when it was
        the one chosen).

        Example:
            >>> import jax, ppl
            >>> from inference import mcmc
            >>> @ppl.gen
            ... def model():
            ...     return ppl.normal(0.0, 1.0) @ "x"
            >>> tr = model.simulate(jax.random.key(0))
            >>> res = mcmc.run(jax.random.key(1), mcmc.hmc(ppl.select("x"), 0.5, 5), tr, 100, n_chains=2)
            >>> res.divergences().tolist()
            [0, 0]
        """

        def count(info, mask=None):
            if isinstance(info, dict):
                if "diverging" not in info:
                    return None
                d = np.asarray(info["diverging"]).astype(bool)
                if mask is not None:
                    d = d & mask
                return d.reshape(d.shape[:2] + (-1,)).any(axis=2).sum(axis=1)
            if isinstance(info, (tuple, list)):
                if _is_mixture_info(info):
                    j = np.asarray(info[0])
                    return (None, tuple(count(sub, j == i) for i, sub in enumerate(info[1])))
                return tuple(count(i, mask) for i in info)
            return None

        return count(self.info)

    def to_arviz(self):
        """An ArviZ ``InferenceData`` with the choices as the posterior and kernel statistics."""
        from inference.diagnostics.mcmc import to_arviz

        return to_arviz(self)

    def summary(self, **kw):
        """ArviZ summary table (mean, sd, HDI, MCSE, bulk/tail ESS, R-hat) as a DataFrame."""
        from inference.diagnostics.mcmc import summary

        return summary(self, **kw)


def _is_mixture_info(info):
    return (len(info) == 2 and isinstance(info[1], tuple) and hasattr(info[0], "dtype")
            and jnp.issubdtype(info[0].dtype, jnp.integer))


# ------------------------------------------------------------------------------ warnings
def _health(kernel, info, label, mask=None):
    """``(label, kernel, per-chain acceptance rate or None, per-chain divergences or None)``
    for every basic kernel inside ``kernel``."""
    if isinstance(kernel, Cycle):
        return [r for i, (k, sub) in enumerate(zip(kernel.kernels, info))
                for r in _health(k, sub, f"{label} component {i}", mask)]
    if isinstance(kernel, Mixture):
        j = np.asarray(info[0])
        return [r for i, (k, sub) in enumerate(zip(kernel.kernels, info[1]))
                for r in _health(k, sub, f"{label} component {i}", (j == i) if mask is None else mask & (j == i))]
    if isinstance(kernel, Repeat):
        return _health(kernel.kernel, info, label, mask)
    if not isinstance(info, dict) or "accept_prob" not in info:
        return []
    ap = np.asarray(info["accept_prob"], dtype=float)
    ap = ap.reshape(ap.shape[:2] + (-1,)).mean(axis=2)
    m = np.ones(ap.shape, bool) if mask is None else mask
    with np.errstate(invalid="ignore"):
        rate = np.where(m.sum(axis=1) > 0, (np.nan_to_num(ap) * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1), np.nan)
    div = None
    if "diverging" in info:
        d = np.asarray(info["diverging"]).astype(bool)
        div = (d.reshape(d.shape[:2] + (-1,)).any(axis=2) & m).sum(axis=1)
    return [(label, kernel, rate, div)]


def _advice(kernel):
    if hasattr(kernel, "step_size"):
        return (f"use a smaller step size than {getattr(kernel, 'step_size')}, or let it adapt "
                "(adapt_step_size=True for hmc/mala, or mcmc.nuts) with burn_in > 0")
    return "use a proposal closer to the posterior (e.g. a smaller random-walk scale) or a gradient kernel"


def _warn_health(kernel, info):
    for label, k, rate, div in _health(kernel, info, f"kernel {kernel.name}"):
        name = label if k is kernel else f"{label} ({k.name})"
        stuck = [c for c, r in enumerate(rate) if np.isfinite(r) and r < _STUCK]
        if stuck:
            rates = ", ".join(f"{rate[c]:.2%}" for c in stuck[:8])
            warnings.warn(
                f"mcmc.run: {name}: chain(s) {stuck[:8]}{' ...' if len(stuck) > 8 else ''} accepted less than "
                f"{_STUCK:.0%} of proposals during sampling (acceptance rate {rates}), so they barely move; "
                f"{_advice(k)}.",
                UserWarning, stacklevel=3)
        if div is not None and np.any(div > 0):
            bad = [c for c in range(len(div)) if div[c] > 0]
            counts = ", ".join(str(int(div[c])) for c in bad[:8])
            warnings.warn(
                f"mcmc.run: {name}: {int(np.sum(div))} divergent transitions (energy error above 1000 or "
                f"not finite) in chain(s) {bad[:8]}{' ...' if len(bad) > 8 else ''} (counts {counts}, see "
                f"res.divergences()); the draws may be biased. {_advice(k)[0].upper() + _advice(k)[1:]}, "
                "or reparameterize the model.",
                UserWarning, stacklevel=3)


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

    A run started from these traces with a kernel that cannot say which choices it moves does
    not store the ``observations`` per draw.

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
    from ppl.core import as_args_tuple

    args = as_args_tuple(args, "mcmc.init_chains")
    observations = ChoiceMap.empty() if observations is None else observations
    tr0, _ = model.generate(key, observations, *args)

    @jax.jit
    def make(keys, obs, packed):
        args = unpack_args(packed)

        def one(k):
            tr, _ = model.generate(k, obs, *args)
            return dataclasses.replace(tr, **{_ARGS: None})

        return jax.vmap(one)(keys)

    batched = make(jax.random.split(key, n_chains), observations, pack_args(tuple(args)))
    out = dataclasses.replace(batched, **{_ARGS: getattr(tr0, _ARGS)})
    if isinstance(observations, ChoiceMap):
        _OBSERVED[out] = tuple(p for p, _ in observations.leaves())
    return out


def run(key, kernel: Kernel, trace: Trace, n_samples: int, n_chains: int = 1, burn_in: int = 0, thin: int = 1,
        *, progress: bool | None = None, chunk_size: int | None = None) -> MCMCResult:
    """Run ``n_chains`` chains of ``kernel`` from ``trace``: ``burn_in`` steps (adaptive kernels
    adapt during them), then ``n_samples`` draws keeping every ``thin``-th state.

    ``trace`` is one trace (every chain starts from it) or a batch of traces with a leading chain
    axis (e.g. from :func:`init_chains`). ``progress`` shows a tqdm bar (default: only for runs of
    at least 5,000 steps); ``chunk_size`` is the number of steps per compiled chunk then. The
    result is bit-identical with or without the bar, whatever ``chunk_size``.

    Only the choices the kernel moves are stored per draw (see the module docstring for the
    rule); the others are in ``res.fixed_choices``. Warns when a chain is stuck (acceptance rate
    below 1% during sampling) or a kernel reported divergent transitions.

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
    stored = _stored_selection(kernel, trace, batched, _OBSERVED.get(trace, ()))
    fixed = _fixed_choices(trace, stored)

    total = burn_in + n_samples * thin
    if progress is None:
        progress = total >= 5000
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"mcmc.{kernel.name}", unit="step")
        chunk = int(chunk_size) if chunk_size else max(1, math.ceil(total / 20))
        if chunk < 1:
            raise ValueError(f"mcmc.run: chunk_size must be >= 1, got {chunk_size}")
    mesh = active_mesh()
    k_init, k_steps = _chain_keys(key, n_chains)
    # The same compiled programs run with and without progress: chunks only change the loops'
    # run-time trip counts, never keys (fold_in of the global step), states or the warm-up length.
    tr, state = _init_chains(kernel, burn_in, mesh, k_init, trace, batched)
    t = 0
    left = burn_in
    while left > 0:
        n = min(left, chunk) if progress else left
        tr, state = _burn(kernel, mesh, k_steps, jnp.asarray(t, jnp.int32), jnp.asarray(n, jnp.int32), tr, state)
        t += n
        left -= n
        if bar is not None:
            bar.update(n)
    size = min(n_samples, max(1, chunk // thin)) if progress else n_samples
    outs = []
    left = n_samples
    while left > 0:
        n = min(left, size)
        tr, state, out = _draws(kernel, mesh, size, thin, stored, k_steps, jnp.asarray(t, jnp.int32),
                                jnp.asarray(n, jnp.int32), tr, state)
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
        choices, info = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=1)[:, :n_samples], *outs)
    if not isinstance(tr, Trace) or np.ndim(tr.score) != 1:  # pragma: no cover - defensive
        raise RuntimeError("mcmc.run: internal error, chains lost their batch axis")
    fixed_paths = tuple(p for p, _ in fixed.leaves())
    res = MCMCResult(DrawMap.wrap(choices, fixed_paths), info, tr, fixed, kernel)
    if trace in _OBSERVED:  # a run continued from res.final_trace knows the observations too
        _OBSERVED[tr] = _OBSERVED[trace]
    _warn_health(kernel, info)
    return res
