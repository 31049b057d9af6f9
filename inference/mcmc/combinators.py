"""Kernel combinators: :func:`cycle`, :func:`mixture`, :func:`repeat`.

Each combinator is itself a kernel: its state is the tuple of its components' states and its
info the tuple of their infos (for :func:`mixture` a :class:`inference.mcmc.infos.MixtureInfo`, for
:func:`repeat` the info of the last application).

Examples:
    >>> import jax, jax.numpy as jnp, ppl
    >>> from inference import mcmc
    >>> @ppl.gen
    ... def model():
    ...     c = ppl.flip(0.5) @ "c"
    ...     mu = ppl.normal(0.0, 1.0) @ "mu"
    ...     ppl.normal(jnp.where(c, mu, -mu), 1.0) @ "y"
    >>> tr, _ = model.generate(jax.random.key(0), ppl.ChoiceMap({"y": 1.0}))
    >>> k = mcmc.cycle(mcmc.gibbs("c"), mcmc.repeat(mcmc.hmc(ppl.select("mu"), 0.3, 5), 2))
    >>> tr2, info = k(jax.random.key(1), tr)
    >>> len(info)
    2
"""

from __future__ import annotations

import dataclasses
import functools
import operator

import jax
import jax.numpy as jnp

from ppl.choicemap import Selection, select
from ppl.core import tree_select

from .base import Kernel, select_trace, strong_types as _strong
from .infos import MixtureInfo

__all__ = ["cycle", "mixture", "repeat", "Cycle", "Mixture", "Repeat"]


def _union_moves(kernels, trace):
    """The union of the components' ``moves`` (``None`` if any cannot say)."""
    parts = [k.moves(trace) for k in kernels]
    if any(p is None for p in parts):
        return None
    return functools.reduce(operator.or_, [p if isinstance(p, Selection) else select(*p) for p in parts])


def _check(kernels, who):
    for k in kernels:
        if not isinstance(k, Kernel):
            raise TypeError(f"mcmc.{who}: expected MCMC kernels (mcmc.mh, mcmc.hmc, ...), got {k!r}")


class _OfKernels(Kernel):
    """A kernel built from several component kernels (``self.kernels``): it moves what any
    component moves, and its state is the tuple of the components' states."""

    def moves(self, trace):
        """The choices any component moves."""
        return _union_moves(self.kernels, trace)

    def init(self, key, trace, n_warmup=0):
        ks = jax.random.split(key, len(self.kernels))
        return tuple(k.init(kk, trace, n_warmup) for k, kk in zip(self.kernels, ks))


@dataclasses.dataclass(frozen=True)
class Cycle(_OfKernels):
    """Apply each kernel in turn (see :func:`cycle`)."""

    kernels: tuple
    name = "cycle"

    def step(self, key, trace, state, synced=False):
        ks = jax.random.split(key, len(self.kernels))
        alone = len(self.kernels) == 1
        states, infos = [], []
        for k, kk, st in zip(self.kernels, ks, state):
            trace, st, info = k.step(kk, trace, st, synced and alone)
            states.append(st)
            infos.append(info)
        return trace, tuple(states), tuple(infos)


@dataclasses.dataclass(frozen=True)
class Repeat(Kernel):
    """Apply one kernel ``n`` times (see :func:`repeat`)."""

    kernel: Kernel
    n: int
    name = "repeat"

    def moves(self, trace):
        """The choices its kernel moves."""
        return self.kernel.moves(trace)

    def init(self, key, trace, n_warmup=0):
        return self.kernel.init(key, trace, n_warmup * self.n)

    def step(self, key, trace, state, synced=False):
        k0, krest = jax.random.split(key)
        trace, state, info = self.kernel.step(k0, trace, state, synced)
        if self.n == 1:
            return trace, state, info

        def body(carry, kk):
            tr, st, _ = carry
            tr, st, inf = self.kernel.step(kk, tr, st, True)
            return _strong((tr, st, inf)), None

        (trace, state, info), _ = jax.lax.scan(body, _strong((trace, state, info)),
                                               jax.random.split(krest, self.n - 1))
        return trace, state, info


@dataclasses.dataclass(frozen=True)
class Mixture(_OfKernels):
    """Apply one kernel drawn at random (see :func:`mixture`)."""

    kernels: tuple
    probs: tuple
    name = "mixture"

    def step(self, key, trace, state, synced=False):
        kc, *ks = jax.random.split(key, len(self.kernels) + 1)
        j = jax.random.categorical(kc, jnp.log(jnp.asarray(self.probs)))
        # Each component runs; only the chosen one's result is kept (no per-chain control flow
        # divergence under vmap). Unchosen components keep their state.
        out_tr, states, infos = trace, [], []
        for i, (k, kk, st) in enumerate(zip(self.kernels, ks, state)):
            tr_i, st_i, info_i = k.step(kk, trace, st, False)
            chosen = j == i
            out_tr = select_trace(chosen, tr_i, out_tr)
            states.append(tree_select(chosen, st_i, st))
            infos.append(info_i)
        return out_tr, tuple(states), MixtureInfo(j, tuple(infos))


def cycle(*kernels) -> Cycle:
    """Apply the kernels one after another (a deterministic-scan composition).

    Examples:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def model():
        ...     ppl.normal(0.0, 1.0) @ "a"
        ...     ppl.normal(0.0, 1.0) @ "b"
        >>> from inference import mcmc
        >>> k = cycle(mcmc.mh(ppl.select("a")), mcmc.mh(ppl.select("b")))
        >>> tr2, (ia, ib) = k(jax.random.key(0), model.simulate(jax.random.key(1)))
        >>> ia._fields
        ('acceptance_rate', 'accepted')
    """
    if len(kernels) == 1 and isinstance(kernels[0], (list, tuple)):
        kernels = tuple(kernels[0])
    _check(kernels, "cycle")
    return Cycle(tuple(kernels))


def mixture(kernels, probs=None) -> Mixture:
    """Apply one of the kernels, chosen with probabilities ``probs`` (uniform by default).

    Every component is evaluated and the chosen one's result kept, so that vmapped chains stay
    in lockstep; the info is a :class:`inference.mcmc.infos.MixtureInfo` ``(chosen, infos)``.

    Examples:
        >>> import jax, ppl
        >>> from inference import mcmc
        >>> @ppl.gen
        ... def model():
        ...     return ppl.normal(0.0, 1.0) @ "x"
        >>> k = mixture([mcmc.mh(ppl.select("x")), mcmc.hmc(ppl.select("x"), 0.5, 3)], [0.3, 0.7])
        >>> _, (j, infos) = k(jax.random.key(0), model.simulate(jax.random.key(1)))
        >>> int(j) in (0, 1)
        True
    """
    kernels = tuple(kernels)
    _check(kernels, "mixture")
    if probs is None:
        probs = (1.0 / len(kernels),) * len(kernels)
    probs = tuple(float(p) for p in probs)
    if len(probs) != len(kernels) or min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
        raise ValueError(f"mcmc.mixture: probs {probs} must be {len(kernels)} non-negative numbers summing to 1")
    return Mixture(kernels, probs)


def repeat(kernel: Kernel, n: int) -> Repeat:
    """Apply ``kernel`` ``n`` times in a row (a ``lax.scan``).

    Examples:
        >>> import jax, ppl
        >>> from inference import mcmc
        >>> @ppl.gen
        ... def model():
        ...     return ppl.normal(0.0, 1.0) @ "x"
        >>> tr2, info = repeat(mcmc.mh(ppl.select("x")), 5)(jax.random.key(0), model.simulate(jax.random.key(1)))
        >>> info.acceptance_rate.shape
        ()
    """
    _check([kernel], "repeat")
    if int(n) < 1:
        raise ValueError(f"mcmc.repeat: n must be >= 1, got {n}")
    return Repeat(kernel, int(n))
