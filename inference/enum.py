"""Exact enumeration of discrete latent sites: :func:`marginalize` and :func:`infer_discrete`.

``marginalize(model, *addrs)`` is a generative function with the model's arguments whose choices
are the model's choices without the named discrete sites, and whose density is the model's density
with those sites summed out exactly. Every GFI method (``simulate``, ``assess``, ``generate``,
``update``, ``regenerate``) returns the marginal model's scores and weights, so HMC/NUTS,
importance sampling and the VI objectives run on it unchanged.

Three kinds of enumerated site, by where the site sits:

- outside any combinator ("global"): all joint values are enumerated (at most 4096 combinations);
- inside ``ppl.vmap``/``ppl.repeat`` at prefix ``P`` (a plate): the copies are conditionally
  independent given the choices outside ``P``, so the model runs once per support value ``k``
  with the site set to ``k`` in every copy and the marginal is
  ``outer + sum_i logsumexp_k score_k[i]`` (cost ``O(N K)``, not ``K**N``);
- inside ``ppl.scan`` at prefix ``P`` (an HMM): the step's carry must be a function of the current
  state (and of the other, fixed choices), so each step's score depends on the previous and the
  current state only; the model runs once per ordered pair of states with the state alternating
  between them, which gives every ``K x K`` transition score of every step, and the forward
  algorithm sums the states out (cost ``O(T K^2)``).

What cannot be summed exactly raises a :class:`ppl.ModelError` naming the address (a site without
finite ``enumerate_support``, a support depending on parameters, too many joint values, a batched
site, sites in two different plates). Dependencies the enumeration assumes away (a site outside
the plate/scan whose density depends on an enumerated value, a scan carry that remembers more
than the current state) are checked on every evaluation: the marginal density is NaN where they
fail, and in ``ppl.debug()`` mode a :class:`ppl.ModelError` is raised.

Example:
    >>> import jax, jax.numpy as jnp, ppl
    >>> from inference.enum import marginalize
    >>> @ppl.gen
    ... def point():
    ...     z = ppl.bernoulli(probs=0.3) @ "z"
    ...     return ppl.normal(jnp.where(z == 1, 2.0, -2.0), 1.0) @ "y"
    >>> marg = marginalize(point.repeat(3), "z")
    >>> y = jnp.array([1.5, -2.0, 0.3])
    >>> lp, _ = marg.assess({"y": y})
    >>> from jax.scipy.stats import norm
    >>> exact = jnp.sum(jnp.log(0.3 * norm.pdf(y, 2.0, 1.0) + 0.7 * norm.pdf(y, -2.0, 1.0)))
    >>> bool(jnp.abs(lp - exact) < 1e-4)
    True
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from ppl.choicemap import ChoiceMap, Masked
from ppl.core import GenerativeFunction, Trace, intercept, pack_args, trace_dataclass
from ppl.errors import AddressError, ModelError, fmt_addr
from ppl.selection import normalize_addr
from ppl.sites import deterministic_view

from ._enum_tables import Hide, combo_index, evaluate, make_plan, plain, sample_enumerated, sum_under, under

__all__ = ["marginalize", "infer_discrete", "MarginalGF", "MarginalTrace"]

# ------------------------------------------------------------------------------ the GF
@trace_dataclass
class MarginalTrace(Trace):
    """The trace of :class:`MarginalGF`: the remaining choices, their per-site scores and the
    marginal log density. ``joint`` is a trace of the model with the remaining choices and some
    values of the enumerated sites (drawn from the model as it ran, or kept through ``update``;
    not from their posterior: use :func:`infer_discrete` for that); ``retval`` is its return value."""

    gf: Any
    packed_args: Any
    retval: Any
    score: Any
    rest: Any
    site_scores: Any
    joint: Any  # the model's trace with the enumerated sites at a posterior draw

    def get_choices(self):
        if deterministic_view():  # ppl.deterministics: the marginal model reports none
            return ChoiceMap.empty()
        return self.rest

    def get_scores(self):
        return self.site_scores

    def strip(self):
        return dataclasses.replace(self, packed_args=None, retval=None)

    def batch_axes(self, axis=0):
        """As :meth:`ppl.core.Trace.batch_axes`; the model trace inside shares the arguments too."""
        return dataclasses.replace(self, packed_args=None, retval=axis, score=axis, rest=axis,
                                   site_scores=axis, joint=self.joint.batch_axes(axis))


@dataclasses.dataclass(frozen=True, eq=True)
class MarginalGF(GenerativeFunction):
    """``model`` with the discrete sites at ``addrs`` summed out (see :func:`marginalize`)."""

    model: Any
    addrs: tuple

    @property
    def name(self):
        return f"marginalize({self.model.name}, {', '.join(fmt_addr(a) for a in self.addrs)})"

    def _plan(self, args):
        return make_plan(self.model, self.addrs, args)

    def _drop(self, choices):
        return ChoiceMap.from_leaves([(p, v) for p, v in choices.leaves() if p not in self.addrs])

    def _check_given(self, chm, what):
        for p, _ in chm.leaves():
            if under(p, self.addrs) or any(a[: len(p)] == p for a in self.addrs):
                raise AddressError(
                    f"{self.name}.{what}: a value was given at {fmt_addr(p)}, which is (or holds) an "
                    "enumerated site; the marginal model has no choice there.")
            if isinstance(chm.get_submap(p).raw_value(), Masked):
                raise ModelError(f"{self.name}.{what}: masked values (at {fmt_addr(p)}) are not supported.")

    def _trace(self, tr, choices, args, tab):
        """The marginal trace of ``choices`` from the model's trace ``tr`` of them (the front run):
        per-site scores are the model's, except that each copy (step) of the plate (scan) carries
        its marginal log density on its first remaining site."""
        plan = tab.plan
        in_group = lambda p: plan.kind != "none" and p[: len(plan.prefix)] == plan.prefix  # noqa: E731
        out = [(p, plain(v)) for p, v in tr.get_scores().leaves() if p not in self.addrs]
        if plan.glob:  # no per-site split: the whole marginal sits on the first entry
            out = [(p, jnp.zeros_like(v)) for p, v in out]
            if out:
                p, v = out[0]
                out[0] = (p, v.at[(0,) * v.ndim].add(tab.logz))
        else:
            first = next((i for i, (p, _) in enumerate(out) if in_group(p)), None)
            out = [(p, jnp.zeros_like(v) if in_group(p) else v) for p, v in out]
            if first is not None:
                out[first] = (out[first][0], tab.parts[0])
            elif out:  # every site of the group is enumerated: its parts go on the first entry
                p, v = out[0]
                out[0] = (p, v.at[(0,) * v.ndim].add(jnp.sum(tab.parts[0])))
        scores = ChoiceMap.from_leaves(out)
        return MarginalTrace(self, pack_args(args), tr.get_retval(), tab.logz, choices, scores, tr)

    def _front(self, method, *a, hide_all=False):
        """The model's ``method`` run once with the enclosing interceptors seeing the remaining
        sites (values they map, e.g. unconstrained HMC coordinates, come back mapped)."""
        with intercept(Hide(None if hide_all else self.addrs)):
            return getattr(self.model, method)(*a)

    def _simulate(self, key, *args):
        tr_f = self._front("simulate", key, *args)
        choices = self._drop(tr_f.get_choices())
        _, tab = evaluate(self, choices, args)
        return self._trace(tr_f, choices, args, tab)

    def _assess(self, choices, *args):
        self._check_given(choices, "assess")
        tr_f, w_f = self._front("generate", jax.random.key(0), choices, *args)
        extra = w_f - sum_under(tr_f.get_scores(), [p for p, _ in choices.leaves()])
        choices = self._drop(tr_f.get_choices())
        _, tab = evaluate(self, choices, args)
        return tab.logz + extra, tr_f.get_retval()

    def _propose(self, key, fixed, args, hide_all=False):
        """Sample the choices not in ``fixed`` from the model (enumerated sites dropped): returns
        (trace, log p_marginal - log q_marginal(fresh choices) + interceptors' extra terms)."""
        tr_f, w_f = self._front("generate", key, fixed, *args, hide_all=hide_all)
        fixed_paths = [p for p, _ in fixed.leaves()]
        extra = w_f - sum_under(tr_f.get_scores(), fixed_paths)
        choices = self._drop(tr_f.get_choices())
        _, tab = evaluate(self, choices, args)
        _, tab_q = evaluate(self, choices, args, excluded=fixed_paths)
        return self._trace(tr_f, choices, args, tab), tab.logz - tab_q.logz + extra

    def _generate(self, key, constraints, *args):
        self._check_given(constraints, "generate")
        return self._propose(key, constraints, args)

    def _update(self, key, trace, constraints, *args):
        self._check_given(constraints, "update")
        old = [p for p, _ in trace.get_choices().leaves()]
        for p, _ in constraints.leaves():
            if p not in old:
                raise AddressError(
                    f"{self.name}.update: {fmt_addr(p)} is not a choice of the trace; the marginal "
                    "model's update changes values of existing choices only.")
        joint = trace.joint
        tr_f, w_f, discard = self._front("update", key, joint, constraints, *args)
        extra = w_f - (tr_f.get_score() - joint.get_score())
        new = self._drop(tr_f.get_choices())
        _, tab = evaluate(self, new, args)
        return self._trace(tr_f, new, args, tab), tab.logz - trace.get_score() + extra, discard

    def _regenerate(self, key, trace, selection, *args):
        old = trace.get_choices()
        keep = old.filter(~selection)
        kept = [p for p, _ in keep.leaves()]
        new_tr, w_new = self._propose(key, keep, args, hide_all=True)
        _, tab_q_old = evaluate(self, old, args, excluded=kept)
        w = w_new - (trace.get_score() - tab_q_old.logz)
        return new_tr, w, old.filter(selection)


def marginalize(model: GenerativeFunction, *addrs) -> MarginalGF:
    """``model`` with the discrete sites at ``addrs`` summed out exactly (see the module docstring
    for the sites that can be enumerated and the cost).

    The result is a generative function with the model's arguments; its choices are the model's
    without ``addrs``; every GFI method's scores and weights are those of the marginal model.

    Example:
        >>> import jax, jax.numpy as jnp, ppl
        >>> @ppl.gen
        ... def m():
        ...     z = ppl.bernoulli(probs=0.25) @ "z"
        ...     return ppl.normal(jnp.where(z == 1, 1.0, 0.0), 1.0) @ "y"
        >>> lp, _ = marginalize(m, "z").assess({"y": 0.5})
        >>> from jax.scipy.stats import norm
        >>> bool(jnp.abs(lp - jnp.log(0.25 * norm.pdf(0.5, 1.0) + 0.75 * norm.pdf(0.5, 0.0))) < 1e-5)
        True
    """
    if not isinstance(model, GenerativeFunction):
        raise TypeError(f"marginalize expects a generative function, got {model!r}")
    if not addrs:
        raise ModelError("marginalize: name at least one discrete site to sum out, e.g. marginalize(model, 'z').")
    paths = tuple(normalize_addr(a) for a in addrs)
    if len(set(paths)) != len(paths):
        raise ModelError(f"marginalize: an address is named twice in {addrs}")
    return MarginalGF(model, paths)


def infer_discrete(key, marginal, choices, *args, probs: bool = False):
    """The enumerated sites' posterior given the other choices (a trace or choice map of the
    marginal model ``marginal``): a :class:`ChoiceMap` of one exact posterior draw (per-copy
    sampling for plates, forward-filtering backward-sampling for scans), or with ``probs=True``
    each enumerated site's posterior probability of each support value: shape ``(K,)`` for a site
    outside any plate, ``(N, K)`` per copy in a plate, ``(T, K)`` per step in a scan (the
    smoothing marginals). ``args`` are the model's arguments (taken from ``choices`` when it is a
    trace and none are given).

    Example:
        >>> import jax, jax.numpy as jnp, ppl
        >>> @ppl.gen
        ... def m():
        ...     z = ppl.bernoulli(probs=0.5) @ "z"
        ...     return ppl.normal(jnp.where(z == 1, 3.0, -3.0), 1.0) @ "y"
        >>> marg = marginalize(m.repeat(2), "z")
        >>> zs = infer_discrete(jax.random.key(0), marg, {"y": jnp.array([3.0, -3.0])})
        >>> zs["z"].tolist()
        [1, 0]
    """
    if not isinstance(marginal, MarginalGF):
        raise TypeError(f"infer_discrete expects the result of marginalize(model, ...), got {marginal!r}")
    if isinstance(choices, Trace):
        args = args or tuple(choices.get_args())
        choices = choices.get_choices()
    choices = ChoiceMap(choices) if not isinstance(choices, ChoiceMap) else choices
    marginal._check_given(choices, "infer_discrete")

    def go(key, choices):
        plan, tab = evaluate(marginal, choices, args)
        if not probs:
            return ChoiceMap.from_leaves(list(sample_enumerated(key, tab).items()))
        out = []
        pg = jax.nn.softmax(tab.by_global)  # (G,)
        g_idx = combo_index(plan.glob)
        for i, s in enumerate(plan.glob):
            out.append((s.path, pg @ jax.nn.one_hot(g_idx[:, i], len(s.support))))
        if plan.kind == "plate":
            post = jnp.einsum("g,gjn->nj", pg, jax.nn.softmax(tab.local, axis=1))
            l_idx = combo_index(plan.local)
            for i, s in enumerate(plan.local):
                out.append((s.path, post @ jax.nn.one_hot(l_idx[:, i], len(s.support))))
        elif plan.kind == "scan":
            def bwd(beta, S):
                new = logsumexp(S + beta[None, :], axis=1)
                return new, new

            def smooth(alpha, trans):
                _, betas = jax.lax.scan(bwd, jnp.zeros_like(alpha[-1]), trans[1:], reverse=True)
                betas = jnp.concatenate([betas, jnp.zeros_like(alpha[-1:])], 0)
                return jax.nn.softmax(alpha + betas, axis=1)

            post = jnp.einsum("g,gtk->tk", pg, jax.vmap(smooth)(tab.alpha, tab.trans))
            out.append((plan.local[0].path, post))
        return ChoiceMap.from_leaves(out)

    return jax.jit(go)(key, choices)
