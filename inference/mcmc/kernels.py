"""Metropolis-Hastings kernels (prior resimulation and custom proposals) and exact Gibbs updates.

- :func:`mh` with a :class:`ppl.Selection`: resimulate the selected choices from the prior with
  ``regenerate``; the acceptance ratio is ``regenerate``'s weight.
- :func:`mh` with a generative function ``proposal(trace, *proposal_args)``: propose new values at
  some of the model's addresses; the move is ``update`` with them, and the reverse move scores
  ``update``'s discard under the proposal run from the new trace.
- :func:`gibbs`: the exact conditional of one finite discrete site by enumerating its support.

Examples:
    >>> import jax, jax.numpy as jnp, ppl
    >>> from inference import mcmc
    >>> @ppl.gen
    ... def model():
    ...     z = ppl.categorical(probs=jnp.array([0.2, 0.3, 0.5])) @ "z"
    ...     ppl.normal(jnp.array([-1.0, 0.0, 1.0])[z], 1.0) @ "y"
    >>> tr, _ = model.generate(jax.random.key(0), ppl.ChoiceMap({"y": 0.5}))
    >>> tr2, info = mcmc.gibbs("z")(jax.random.key(1), tr)
    >>> info.probs.shape
    (3,)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd

from ppl.choicemap import ChoiceMap, Masked, Selection, normalize_addr, select
from ppl.core import GenerativeFunction, Interceptor, intercept, masked_total
from ppl.errors import AddressError, ModelError, fmt_addr

from .base import Kernel, accept, check_selection, index_trace
from .infos import GibbsInfo

__all__ = ["mh", "MH", "MHProposal", "gibbs", "Gibbs"]


@dataclasses.dataclass(frozen=True)
class MH(Kernel):
    """Metropolis-Hastings resimulating ``selection`` from the prior (see :func:`mh`)."""

    selection: Selection
    name = "mh"

    def moves(self, trace):
        """The selected choices."""
        return self.selection

    def step(self, key, trace, state, synced=False):
        check_selection(trace, self.selection, "mcmc.mh")
        k1, k2 = jax.random.split(key)
        new, w, _ = trace.get_gen_fn().regenerate(k1, trace, self.selection, *trace.get_args())
        out, info = accept(k2, w, new, trace)
        return out, state, info


def _static_paths(chm: ChoiceMap):
    return {p for p, _ in chm.leaves()}


@dataclasses.dataclass(frozen=True)
class MHProposal(Kernel):
    """Metropolis-Hastings with a custom proposal generative function (see :func:`mh`)."""

    proposal: GenerativeFunction
    proposal_args: tuple = ()
    name = "mh"

    def moves(self, trace):
        """The addresses the proposal proposes (every branch of it, from its static structure)."""
        struct = jax.eval_shape(lambda k, t: self.proposal.simulate(k, t, *self.proposal_args).choices,
                                jax.random.key(0), trace)
        return [q for q, _ in struct.leaves()]

    def step(self, key, trace, state, synced=False):
        k1, k2, k3 = jax.random.split(key, 3)
        args = trace.get_args()
        fwd = self.proposal.simulate(k1, trace, *self.proposal_args)
        constraints = fwd.choices
        new, w, discard = trace.get_gen_fn().update(k2, trace, constraints, *args)
        # Addresses the proposal can propose (all branches, static structure).
        shape_new = jax.eval_shape(lambda k, t: self.proposal.simulate(k, t, *self.proposal_args).choices, k1, new)
        reach = _static_paths(shape_new) | _static_paths(constraints)
        # Reverse move: the proposal run from the new trace re-proposes the discarded values it
        # can reach; discarded choices it cannot reach are drawn from their prior by the reverse
        # update, so their prior density (their score in the old trace) enters the ratio. Fresh
        # choices drawn from the prior are already in update's weight (-log q(fresh)).
        d_leaves = discard.leaves()
        back = ChoiceMap.from_leaves([(p, v) for p, v in d_leaves if p in reach])
        bwd, _ = self.proposal.assess(back, new, *self.proposal_args)
        unreached = {p: (v.flag if isinstance(v, Masked) else True) for p, v in d_leaves if p not in reach}
        removed = masked_total([(p, v) for p, v in trace.get_scores().leaves() if p in unreached],
                               extra_flags={p: f for p, f in unreached.items() if f is not True})
        log_alpha = w + removed + bwd - fwd.get_score()
        out, info = accept(k3, log_alpha, new, trace)
        return out, state, info


def mh(target, proposal_args: tuple = ()) -> Kernel:
    """Metropolis-Hastings kernel.

    ``mh(selection)`` resimulates the selected choices from their prior (``regenerate``).
    ``mh(proposal, proposal_args)`` uses a generative function ``proposal(trace, *proposal_args)``
    whose choices are new values at model addresses (it may propose values that change the model's
    control flow, e.g. a ``ppl.cond`` predicate together with the new branch's choices). The
    reverse move runs the proposal from the new trace and scores ``update``'s discard, so the
    acceptance ratio is exact when either (a) the proposal proposes every choice the move creates
    and can re-propose every choice it removes, or (b) it proposes none of the choices of a branch
    that appears or disappears (those are then drawn from the prior).

    Examples:
        >>> import jax, ppl
        >>> @ppl.gen
        ... def model():
        ...     x = ppl.normal(0.0, 1.0) @ "x"
        ...     ppl.normal(x, 0.5) @ "y"
        >>> @ppl.gen
        ... def walk(tr, s):
        ...     ppl.normal(tr.choices["x"], s) @ "x"
        >>> tr, _ = model.generate(jax.random.key(0), ppl.ChoiceMap({"y": 1.0}))
        >>> tr2, info = mh(walk, (0.5,))(jax.random.key(1), tr)
        >>> float(info.acceptance_rate) <= 1.0
        True
    """
    if isinstance(target, Selection):
        return MH(target)
    if isinstance(target, (str, tuple)):
        return MH(select(target))
    if isinstance(target, GenerativeFunction):
        return MHProposal(target, tuple(proposal_args))
    raise TypeError(f"mcmc.mh expects a ppl.Selection or a proposal generative function, got {target!r}")


# ------------------------------------------------------------------------------------ gibbs
class _Inspect(Interceptor):
    """Records static facts about one site's distribution during a (shape-only) execution."""

    def __init__(self, path):
        self.path = path
        self.dist = None

    def handles(self, path):
        return path == self.path

    def observe(self, path, gf, d, value, old_value):
        self.dist = (gf.name, _support_values(d, path))
        return value, 0.0, old_value


def _concrete(x):
    if x is None:
        return None
    try:
        return np.asarray(x)
    except Exception:
        return None


def _support_values(d, path):
    base = d
    while isinstance(base, (nd.Independent, nd.ExpandedDistribution, nd.MaskedDistribution)):
        base = base.base_dist
    if isinstance(base, (nd.BernoulliProbs, nd.BernoulliLogits)):
        return np.array([0, 1])
    if isinstance(base, (nd.CategoricalProbs, nd.CategoricalLogits)):
        k = (base.probs if isinstance(base, nd.CategoricalProbs) else base.logits).shape[-1]
        return np.arange(k)
    sup = d.support
    lo, hi = getattr(sup, "lower_bound", None), getattr(sup, "upper_bound", None)
    lo, hi = _concrete(lo), _concrete(hi)
    if getattr(sup, "is_discrete", False) and lo is not None and hi is not None:
        if np.ndim(lo) == 0 or np.all(lo == np.ravel(lo)[0]) and np.all(hi == np.ravel(hi)[0]):
            lo, hi = int(np.ravel(lo)[0]), int(np.ravel(hi)[0])
            if hi - lo + 1 <= 10_000:
                return np.arange(lo, hi + 1)
    raise ModelError(
        f"mcmc.gibbs: the site at {fmt_addr(path)} ({type(d).__name__}) has no finite support "
        "known at trace time (bernoulli, categorical, or an integer interval with constant "
        "bounds, e.g. binomial with a constant total_count); use mcmc.mh for it."
    )


@dataclasses.dataclass(frozen=True)
class Gibbs(Kernel):
    """Exact conditional update of one finite discrete site (see :func:`gibbs`)."""

    address: Any
    name = "gibbs"

    def moves(self, trace):
        """The site it updates."""
        return [normalize_addr(self.address)]

    def _support(self, trace, path):
        icpt = _Inspect(path)

        def run(t):
            with intercept(icpt):
                t.get_gen_fn().update(jax.random.key(0), t, ChoiceMap({path: t.choices[path]}), *t.get_args())
            return 0

        jax.eval_shape(run, trace)
        return icpt.dist[1]

    def step(self, key, trace, state, synced=False):
        path = normalize_addr(self.address)
        check_selection(trace, select(path), "mcmc.gibbs")
        leaves = dict(trace.choices.leaves())
        if path not in leaves:
            raise AddressError(f"mcmc.gibbs: {fmt_addr(path)} is not a single site of the trace")
        cur = leaves[path]
        if isinstance(cur, Masked):
            raise ModelError(
                f"mcmc.gibbs: the site at {fmt_addr(path)} is conditionally present (in a branch); "
                "Gibbs updates need a site that is always present."
            )
        if jnp.issubdtype(jnp.result_type(cur), jnp.floating):
            raise ModelError(f"mcmc.gibbs: the site at {fmt_addr(path)} is continuous; use mh, hmc or nuts.")
        values = jnp.asarray(self._support(trace, path), dtype=jnp.result_type(cur))
        shape = jnp.shape(cur)
        n = int(np.prod(shape))

        def one(tr, xs):
            i, k = xs
            k_upd, k_draw = jax.random.split(k)
            flat = jnp.ravel(tr.choices[path])

            def score(v):
                val = flat.at[i].set(v).reshape(shape)
                new, w, _ = tr.get_gen_fn().update(k_upd, tr, ChoiceMap({path: val}), *tr.get_args())
                return new, w

            news, ws = jax.vmap(score, out_axes=(tr.batch_axes(0), 0))(values)
            ws = jnp.where(jnp.isnan(ws), -jnp.inf, ws)
            j = jax.random.categorical(k_draw, ws)
            new = index_trace(news, j, tr)
            return new, jax.nn.softmax(ws)

        ks = jax.random.split(key, n)
        out, probs = jax.lax.scan(one, trace, (jnp.arange(n), ks))
        probs = probs[0] if n == 1 else probs.reshape(shape + (values.shape[0],))
        info = GibbsInfo(jnp.ones(()), jnp.array(True), probs)
        return out, state, info


def gibbs(address) -> Gibbs:
    """Exact Gibbs update of a finite discrete site: enumerate its support, score each value with
    ``update`` and draw from the normalized conditional. For an array-valued site the elements are
    updated one after another (a systematic sweep, each exact). Exact as long as the site's value
    does not change which other addresses exist (for such moves use :func:`mh` with a proposal).

    Examples:
        >>> import jax, jax.numpy as jnp, ppl
        >>> @ppl.gen
        ... def model():
        ...     c = ppl.flip(0.5) @ "c"
        ...     ppl.normal(jnp.where(c, 2.0, -2.0), 1.0) @ "y"
        >>> tr, _ = model.generate(jax.random.key(0), ppl.ChoiceMap({"y": 2.0}))
        >>> _, info = gibbs("c")(jax.random.key(1), tr)
        >>> bool(info.probs[1] > 0.99)
        True
    """
    normalize_addr(address)
    return Gibbs(address)
