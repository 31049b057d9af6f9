"""Streaming (online) particle filtering: observations arrive in blocks, the filter state is carried
between calls.

:func:`filter_init` makes a :class:`FilterState` (a pytree: the particles' carries, log weights,
running log Z-hat, time index and key; the filter's settings are static metadata), and
:func:`filter_step_block` advances it by a block of time steps of a ``ppl.scan`` state-space
model. The key of time step ``t`` is ``fold_in(key, t)``, as in :func:`~inference.smc.particle_filter`,
so filtering ``T`` observations in blocks of any sizes gives bit for bit the state (and log Z-hat)
of one :func:`~inference.smc.particle_filter` run over the ``T`` steps with the same key. The
memory of a call depends on the block length only, never on how many steps came before.

The state can be saved and restored with :func:`inference.checkpoint.save` /
:func:`inference.checkpoint.restore` (``restore(directory, like=state)``) between blocks.

Example:
    >>> import jax, jax.numpy as jnp, ppl
    >>> from inference import smc
    >>> @ppl.gen
    ... def step(x, _):
    ...     x = ppl.normal(x, 1.0) @ "x"
    ...     ppl.normal(x, 1.0) @ "y"
    ...     return x, None
    >>> model, ys = ppl.scan(step, length=6), jnp.arange(6.0)
    >>> st = smc.filter_init(jax.random.key(0), model, 0.0, 100)
    >>> st = smc.filter_step_block(st, ppl.ChoiceMap({"y": ys[:4]}))
    >>> st = smc.filter_step_block(st, ppl.ChoiceMap({"y": ys[4:]}))
    >>> full = smc.particle_filter(jax.random.key(0), model, (0.0, None), ppl.ChoiceMap({"y": ys}), 100)
    >>> int(st.t), bool(st.log_z == full.log_z)
    (6, True)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from ppl.errors import ModelError, ShapeError

from ..checkpoint import run_chunk
from ._util import as_choicemap, check_alive, check_n_particles
from .filters import FilterStep, check_ssm
from .resampling import DEFAULT_RESAMPLING, check_resampling, ess_from_normalized, log_evidence

__all__ = ["FilterState", "filter_init", "filter_step_block"]


@dataclasses.dataclass(eq=False)
class FilterState:
    """The state of an online particle filter (a pytree; ``config``, the filter's settings, is static).

    - ``carries``: every particle's scan carry, leaves ``(N, ...)``;
    - ``log_weights``: ``(N,)`` filtering log weights of the carries;
    - ``log_z`` (a property): running log Z-hat of the observations so far (a scalar), from
      ``log_z_resampled`` (the part banked at the resampling steps) and the current weights;
    - ``all_dead``: True once every particle had weight zero at some step;
    - ``t``: the number of time steps done; ``key``: the run's key (step ``t`` uses ``fold_in(key, t)``).

    ``ess`` is the effective sample size of the current weights.
    """

    carries: Any
    log_weights: Any
    normalized: Any
    log_z_resampled: Any
    all_dead: Any
    t: Any
    key: Any
    config: Any = dataclasses.field(default=None, metadata=dict(static=True))

    @property
    def log_z(self):
        return log_evidence(self.log_z_resampled, self.normalized[1], jnp.shape(self.log_weights)[0])

    @property
    def ess(self):
        lwn, _, dead = self.normalized
        return ess_from_normalized(lwn, dead)

    def log_marginal_likelihood(self):
        """log Z-hat of the observations filtered so far."""
        return self.log_z

    def filtered_mean(self, fn=None):
        """``E[fn(carry) | y_{1:t}]`` under the current weights (default: the carry itself).

        Example:
            >>> import jax, jax.numpy as jnp, ppl
            >>> from inference import smc
            >>> @ppl.gen
            ... def step(x, _):
            ...     x = ppl.normal(x, 1.0) @ "x"
            ...     ppl.normal(x, 1.0) @ "y"
            ...     return x, None
            >>> st = smc.filter_init(jax.random.key(0), ppl.scan(step, length=3), 0.0, 50)
            >>> st = smc.filter_step_block(st, ppl.ChoiceMap({"y": jnp.ones(3)}))
            >>> st.filtered_mean().shape
            ()
        """
        w = jnp.exp(self.normalized[0])
        vals = self.carries if fn is None else jax.vmap(fn)(self.carries)
        return jax.tree_util.tree_map(lambda v: jnp.tensordot(w, v.astype(w.dtype), axes=1), vals)


jax.tree_util.register_dataclass(FilterState)


def _inner(state):
    return (state.carries, state.log_weights, state.normalized, state.log_z_resampled, state.all_dead, state.t, ())


def _outer(inner, key, config):
    carries, lw, normalized, log_z, dead, t, _ = inner
    return FilterState(carries, lw, normalized, log_z, dead, t, key, config)


def filter_init(key, model, init_carry, n_particles: int, proposal=None, resampling: str = DEFAULT_RESAMPLING,
                ess_threshold: float = 1.0) -> FilterState:
    """The state of an online particle filter before its first step, for the ``ppl.scan`` model
    ``model`` (only its step function is used; its length does not bound the stream).

    ``init_carry`` is the scan's initial carry; ``proposal``, ``resampling`` and ``ess_threshold``
    are as for :func:`~inference.smc.particle_filter`. Advance it with :func:`filter_step_block`.

    Example:
        >>> import jax, ppl
        >>> from inference import smc
        >>> @ppl.gen
        ... def step(x, _):
        ...     x = ppl.normal(x, 1.0) @ "x"
        ...     ppl.normal(x, 1.0) @ "y"
        ...     return x, None
        >>> st = smc.filter_init(jax.random.key(0), ppl.scan(step, length=10), 0.0, 64)
        >>> st.log_weights.shape, int(st.t)
        ((64,), 0)
    """
    step = check_ssm(model, "smc.filter_init")
    check_resampling(resampling, "smc.filter_init")
    fs = FilterStep(step, check_n_particles(n_particles, "smc.filter_init"), proposal, resampling,
                    float(ess_threshold))
    return _outer(fs.init(init_carry), key, fs)


@functools.partial(jax.jit, static_argnames=("config", "size"))
def _advance(config, size, key, inner, obs, xs):
    inner = jax.tree_util.tree_map(lambda x: jax.lax.convert_element_type(x, jnp.result_type(x)), inner)
    inner, _ = run_chunk(config, size, True, key, inner[5], inner, (obs, xs, inner[5]))
    return inner


def filter_step_block(state: FilterState, observations, xs=None) -> FilterState:
    """Advance the filter ``state`` by one block of time steps: ``observations`` is a ChoiceMap of
    the block's observations stacked over time (leading axis ``B``, the block length), ``xs`` the
    scan's per-step inputs for the block (leading axis ``B``; ``None`` if the model has none).

    Returns the new state. Filtering in blocks of any sizes gives, bit for bit, the result of one
    run over all the steps with the same key (see the module docs). One compiled program per
    block length (and filter settings).

    Example:
        >>> import jax, jax.numpy as jnp, ppl
        >>> from inference import smc
        >>> @ppl.gen
        ... def step(x, _):
        ...     x = ppl.normal(x, 1.0) @ "x"
        ...     ppl.normal(x, 1.0) @ "y"
        ...     return x, None
        >>> st = smc.filter_init(jax.random.key(0), ppl.scan(step, length=10), 0.0, 64)
        >>> for block in jnp.ones(9).reshape(3, 3):
        ...     st = smc.filter_step_block(st, ppl.ChoiceMap({"y": block}))
        >>> int(st.t), bool(jnp.isfinite(st.log_z))
        (9, True)
    """
    if not isinstance(state, FilterState) or not isinstance(state.config, FilterStep):
        raise ModelError("smc.filter_step_block: expected a FilterState from smc.filter_init, got "
                         f"{type(state).__name__}")
    obs = as_choicemap(observations)
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None
             for tree in (obs, xs) for leaf in jax.tree_util.tree_leaves(tree)}
    if None in sizes or len(sizes) != 1:
        raise ShapeError(
            "smc.filter_step_block: every leaf of the block's observations and xs needs the same leading time "
            f"axis (the block length); got leading sizes {sorted(s for s in sizes if s is not None)}"
            f"{' and a scalar' if None in sizes else ''}. Stack a block of B steps along axis 0.")
    (size,) = sizes
    inner = _advance(state.config, int(size), state.key, _inner(state), obs, xs)
    check_alive(inner[4], "smc.filter_step_block")
    return _outer(inner, state.key, state.config)
