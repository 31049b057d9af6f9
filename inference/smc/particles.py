"""Particle collections: weighted, vectorized traces as one pytree.

A :class:`ParticleCollection` holds ``traces`` (one trace whose every leaf has a leading particle
axis of size ``N``), unnormalized ``log_weights`` of shape ``(N,)``, and ``log_z``, the log of the
product of the average weights at past resampling steps. Its evidence estimate is

    log Z-hat = log_z + logsumexp(log_weights) - log N,

and Z-hat is an unbiased estimate of the normalizing constant of the target (unbiased in Z, not
in log Z). ``dead`` is True once every particle had weight zero (Z-hat is then 0 and log Z-hat is
``-inf``; nothing becomes NaN).

Storage: values that every particle shares (the model arguments, observed values, anything
computed from them alone) are stored once, without a particle axis: ``stored_traces`` is the
trace as stored and ``particle_axes`` (static pytree metadata) flags, per leaf of
``stored_traces``, whether it has a particle axis. ``ps.traces`` broadcasts the shared leaves on
access, so every leaf of it has the leading particle axis (under ``jit`` the broadcast is free;
outside it, it allocates the copies: read single addresses of large shared data from
``stored_traces`` instead). The SMC steps, ``expectation`` and ``sample`` work on the stored form.
A ``lax.scan`` carry must keep the same ``particle_axes``; :meth:`ParticleCollection.materialize`
gives every leaf a particle axis (steps then keep it that way).

Example:
    >>> import jax, jax.numpy as jnp, ppl
    >>> from inference import importance
    >>> @ppl.gen
    ... def model():
    ...     x = ppl.normal(0.0, 1.0) @ "x"
    ...     return ppl.normal(x, 1.0) @ "y"
    >>> ps = importance.sample(jax.random.key(0), model, (), ppl.ChoiceMap({"y": 1.0}), 2000)
    >>> ps.log_weights.shape, ps.traces.choices["x"].shape, ps.traces.choices["y"].shape
    ((2000,), (2000,), (2000,))
    >>> ps.stored_traces.choices["y"].shape   # the observation is stored once
    ()
    >>> bool(abs(ps.expectation(lambda tr: tr.choices["x"]) - 0.5) < 0.1)
    True
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._util import broadcast_shared, check_n_particles, renamed_kwargs
from .resampling import ess as _ess
from .resampling import DEFAULT_RESAMPLING, log_evidence, log_normalize, resample_indices

__all__ = ["ParticleCollection", "gather", "n_particles"]


def gather(tree, idx):
    """Index every leaf of ``tree`` along its leading (particle) axis."""
    return jax.tree_util.tree_map(lambda x: jnp.take(x, idx, axis=0), tree)


def gather_stored(tree, flags, idx):
    """Index the leaves of ``tree`` flagged in ``flags`` (per-particle) along their leading axis;
    shared leaves (flag ``False``) are kept as they are."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    leaves = [jnp.take(x, idx, axis=0) if f else x for x, f in zip(leaves, flags)]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def map_stored(fn, tree, flags):
    """``jax.vmap(fn)`` over the particles of a stored tree (shared leaves are not mapped)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    idx = [i for i, f in enumerate(flags) if f]

    def one(*vals):
        ls = list(leaves)
        for i, v in zip(idx, vals):
            ls[i] = v
        return fn(jax.tree_util.tree_unflatten(treedef, ls))

    return jax.vmap(one)(*[leaves[i] for i in idx])


def n_particles(log_weights) -> int:
    return int(jnp.shape(log_weights)[0])


_ess_jit = jax.jit(_ess)


@jax.jit
def _lml(log_weights, log_z):
    _, lse, _ = log_normalize(log_weights)
    return log_evidence(log_z, lse, log_weights.shape[0])


@jax.jit
def _weights(log_weights):
    return jnp.exp(log_normalize(log_weights)[0])


@jax.jit
def _any_dead(log_weights, dead):
    return jnp.logical_or(dead, log_normalize(log_weights)[2])


@jax.jit(static_argnums=(0, 1))
def _expectation(fn, flags, log_weights, traces):
    w = jnp.exp(log_normalize(log_weights)[0])
    vals = map_stored(fn, traces, flags)
    return jax.tree_util.tree_map(lambda v: jnp.tensordot(w, v.astype(w.dtype), axes=1), vals)


@jax.jit(static_argnums=(0,))
def _sample(flags, traces, idx):
    return broadcast_shared(gather_stored(traces, flags, idx), flags, idx.shape[0])


class ParticleCollection:
    """Weighted particles: ``traces`` (vectorized), ``log_weights`` (N,), ``log_z``, ``dead``.

    ``ParticleCollection(traces, log_weights, log_z=0.0, dead=False, particle_axes=None,
    shared_copies=None)``: ``traces`` is the trace as stored and ``particle_axes`` flags, per leaf
    of it, whether the leaf has a leading particle axis (``None``: every leaf has one).
    ``shared_copies`` (set by the SMC steps) records, per leaf, the first shared leaf holding the
    same value (e.g. a model's return value that is an observed value), so that steps know them
    to be equal; leaves recorded as copies must stay equal. A pytree (usable under ``jit``,
    ``vmap`` and ``lax.scan``); ``particle_axes`` and ``shared_copies`` are static metadata.

    Example:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference import importance
        >>> ps = importance.sample(jax.random.key(0), ppl.normal, (0.0, 1.0), ppl.ChoiceMap.value(0.5), 100)
        >>> ps.particle_axes   # the trace's arguments, value and score are the same for every particle
        (False, False, False, False)
        >>> ps.traces.retval.shape, ps.stored_traces.retval.shape
        ((100,), ())
        >>> ps.materialize().particle_axes is None
        True
    """

    __slots__ = ("stored_traces", "log_weights", "log_z", "dead", "particle_axes", "shared_copies")

    def __init__(self, traces, log_weights, log_z=0.0, dead=False, particle_axes=None, shared_copies=None):
        self.stored_traces = traces
        self.log_weights = log_weights
        self.log_z = log_z
        self.dead = dead
        if particle_axes is not None:
            particle_axes = tuple(bool(a) for a in particle_axes)
            if all(particle_axes):
                particle_axes = None
        if shared_copies is not None:
            shared = particle_axes if particle_axes is not None else (True,) * len(shared_copies)
            shared_copies = tuple(int(j) if not shared[i] and not shared[j] else i
                                  for i, j in enumerate(shared_copies))
            if shared_copies == tuple(range(len(shared_copies))):
                shared_copies = None
        self.particle_axes = particle_axes
        self.shared_copies = shared_copies

    @property
    def n_particles(self) -> int:
        """The number of particles ``N``."""
        return n_particles(self.log_weights)

    def leaf_axes(self) -> tuple:
        """Per leaf of ``stored_traces``: whether it has a leading particle axis."""
        if self.particle_axes is not None:
            return self.particle_axes
        return (True,) * len(jax.tree_util.tree_leaves(self.stored_traces))

    def leaf_copies(self) -> tuple:
        """Per leaf of ``stored_traces``: the index of the first shared leaf with the same value."""
        if self.shared_copies is not None:
            return self.shared_copies
        return tuple(range(len(jax.tree_util.tree_leaves(self.stored_traces))))

    @property
    def traces(self):
        """The particles' traces, every leaf with a leading particle axis (shared leaves are
        broadcast on access; ``stored_traces`` holds them once)."""
        if self.particle_axes is None:
            return self.stored_traces
        return broadcast_shared(self.stored_traces, self.particle_axes, self.n_particles)

    @property
    def choices(self):
        """The particles' choices (every leaf with a leading particle axis)."""
        return self.traces.choices

    def materialize(self) -> "ParticleCollection":
        """The same particles with every stored leaf given a particle axis (``particle_axes``
        ``None``), e.g. for a ``lax.scan`` carry whose steps would change which leaves are shared."""
        return ParticleCollection(self.traces, self.log_weights, self.log_z, self.dead)

    def log_marginal_likelihood(self):
        """log Z-hat: ``log_z + logsumexp(log_weights) - log N`` (``-inf`` if all died)."""
        return _lml(self.log_weights, self.log_z)

    def ess(self):
        """Effective sample size of the current weights (0 if every particle is dead)."""
        return _ess_jit(self.log_weights)

    def normalized_weights(self):
        """Normalized weights (uniform if every particle is dead; never NaN)."""
        return _weights(self.log_weights)

    def all_dead(self):
        """Whether every particle has weight zero now or had at a past resampling step."""
        return _any_dead(self.log_weights, self.dead)

    @renamed_kwargs("ParticleCollection.resample", scheme="resampling")
    def resample(self, key, resampling: str = DEFAULT_RESAMPLING):
        """Resample by the scheme ``resampling`` (default ``"systematic"``); the new weights are
        equal and log Z-hat is unchanged. ``scheme=`` is a deprecated alias of ``resampling=``."""
        from .steps import resample

        return resample(key, self, resampling)

    def expectation(self, fn):
        """Self-normalized estimate of ``E[fn(trace)]``; ``fn`` maps one trace to a pytree.

        Example:
            >>> import jax, ppl
            >>> from inference import importance
            >>> ps = importance.sample(jax.random.key(1), ppl.normal, (0.0, 1.0), None, 500)
            >>> float(ps.expectation(lambda tr: tr.retval ** 2)) > 0.5
            True
        """
        return _expectation(fn, self.leaf_axes(), self.log_weights, self.stored_traces)

    @renamed_kwargs("ParticleCollection.sample", scheme="resampling")
    def sample(self, key, n: int | None = None, resampling: str = DEFAULT_RESAMPLING):
        """``n`` traces drawn according to the weights (sampling importance resampling); every
        leaf has a leading axis of size ``n`` (``N``, the number of particles, if ``n`` is None).

        ``resampling`` is the scheme drawing the ancestors. The default is ``"systematic"``
        (lower variance; it used to be ``"multinomial"``, so the same key now gives different
        traces); pass ``resampling="multinomial"`` for i.i.d. draws, e.g. when the ``n`` traces
        must be independent given the weights. ``scheme=`` is a deprecated alias.

        Example:
            >>> import jax, ppl
            >>> from inference import importance
            >>> ps = importance.sample(jax.random.key(0), ppl.normal, (0.0, 1.0), None, 100)
            >>> ps.sample(jax.random.key(1), 5, resampling="multinomial").retval.shape
            (5,)
        """
        if n is not None:
            n = check_n_particles(n, "ParticleCollection.sample", "n")
        idx = resample_indices(key, self.log_weights, resampling, n_out=n)
        return _sample(self.leaf_axes(), self.stored_traces, idx)

    def __repr__(self):
        try:
            lml = float(self.log_marginal_likelihood())
            return f"ParticleCollection(n={self.n_particles}, log_ml={lml:.4f}, ess={float(self.ess()):.1f})"
        except Exception:
            return f"ParticleCollection(n={self.n_particles})"


def _flatten_with_keys(ps):
    K = jax.tree_util.GetAttrKey
    return ((K("stored_traces"), ps.stored_traces), (K("log_weights"), ps.log_weights), (K("log_z"), ps.log_z),
            (K("dead"), ps.dead)), (ps.particle_axes, ps.shared_copies)


def _flatten(ps):
    return (ps.stored_traces, ps.log_weights, ps.log_z, ps.dead), (ps.particle_axes, ps.shared_copies)


def _unflatten(aux, children):
    ps = object.__new__(ParticleCollection)
    ps.stored_traces, ps.log_weights, ps.log_z, ps.dead = children
    ps.particle_axes, ps.shared_copies = aux
    return ps


jax.tree_util.register_pytree_with_keys(ParticleCollection, _flatten_with_keys, _unflatten, _flatten)
