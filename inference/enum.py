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
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from ppl.choicemap import ChoiceMap, Masked
from ppl.combinators import ScanGF, VmapGF
from ppl.core import GenerativeFunction, Interceptor, Trace, intercept, pack_args, trace_dataclass
from ppl.dist_checks import debug_check
from ppl.errors import AddressError, ModelError, fmt_addr
from ppl.selection import normalize_addr
from ppl.sites import deterministic_view
from ppl.staging import debug_enabled, raise_from_callback

__all__ = ["marginalize", "infer_discrete", "MarginalGF", "MarginalTrace"]

MAX_GLOBAL = 4096  # joint values of the enumerated sites outside any combinator
MAX_LOCAL = 1024  # joint values per copy of the enumerated sites of one plate
MAX_SCAN = 64  # states of an enumerated scan site (K^2 + 1 model runs)


# ------------------------------------------------------------------------------ the plan
@dataclasses.dataclass(frozen=True)
class _Site:
    path: tuple
    support: np.ndarray  # (K, *event), the site's dtype


@dataclasses.dataclass(frozen=True)
class _Plan:
    glob: tuple  # _Site outside any combinator
    local: tuple  # _Site inside the group
    kind: str  # "none", "plate" or "scan"
    prefix: tuple  # the group's address prefix
    n: int  # copies / steps of the group


class _Hide(Interceptor):
    """Plain sampling/observing at ``paths`` (every site when None), hiding those sites from the
    interceptors of the enclosing inference code: they see the remaining choices once (in the
    front run of each method), never the enumerated sites or the enumeration runs."""

    def __init__(self, paths=None):
        self.paths = None if paths is None else set(paths)

    def handles(self, path):
        return self.paths is None or path in self.paths


class _Capture(_Hide):
    """Record the numpyro distribution's support at each enumerated site (abstract run)."""

    def __init__(self, paths):
        super().__init__(None)
        self.targets = set(paths)
        self.support = {}

    def sample(self, path, gf, d, key):
        if path not in self.targets:
            return gf.draw(d, key)
        where = f"marginalize: the site at {fmt_addr(path)}"
        if not getattr(d, "has_enumerate_support", False):
            raise ModelError(
                f"{where} ({type(d).__name__}) has no finite support to enumerate; only discrete "
                "sites with numpyro's enumerate_support (bernoulli, categorical, ...) can be summed out.")
        if tuple(d.batch_shape) != ():
            raise ModelError(
                f"{where} has batch shape {tuple(d.batch_shape)}; enumerate scalar sites only: put "
                "the copies in ppl.vmap/ppl.repeat (a plate) so that they are summed out one by one.")
        with jax.ensure_compile_time_eval():
            sup = d.enumerate_support(expand=False)
        if isinstance(sup, jax.core.Tracer):
            raise ModelError(
                f"{where}: its support depends on traced parameters; give the support's bounds as "
                "Python numbers so that it is known when the model is compiled.")
        self.support[path] = np.asarray(sup)
        return gf.draw(d, key)


def _plan(model, paths, args) -> _Plan:
    cap = _Capture(paths)
    with intercept(cap):
        tr = jax.eval_shape(lambda k: model.simulate(k, *args), jax.random.key(0))
    choices = dict(tr.get_choices().leaves())
    glob, groups = [], {}
    for path in paths:
        if path not in choices or path not in cap.support:
            raise AddressError(
                f"marginalize: the model has no distribution site at {fmt_addr(path)} (its "
                f"addresses are {sorted(choices)[:20]}); fix the address.")
        sup = cap.support[path].astype(choices[path].dtype)
        site = _Site(path, sup)
        kind, prefix = "none", ()
        for i in range(len(path) + 1):  # the site itself may be a vmapped distribution
            try:
                gf = (tr if i == 0 else tr.get_subtrace(path[:i])).get_gen_fn()
            except AddressError:
                break
            if isinstance(gf, (VmapGF, ScanGF)):
                kind, prefix = ("plate" if isinstance(gf, VmapGF) else "scan"), path[:i]
                break
        if kind == "none":
            if choices[path].shape != sup.shape[1:]:
                raise ModelError(
                    f"marginalize: the site at {fmt_addr(path)} has shape {choices[path].shape}; "
                    "enumerate scalar sites, with repeated ones in ppl.vmap/ppl.repeat.")
            glob.append(site)
            continue
        shape = choices[path].shape
        if shape != (shape[0],) + sup.shape[1:]:
            raise ModelError(
                f"marginalize: the site at {fmt_addr(path)} sits in nested combinators below "
                f"{fmt_addr(prefix)} (value shape {shape}); enumerate sites of one plate or scan level.")
        groups.setdefault((kind, prefix), []).append((site, shape[0]))
    if len(groups) > 1:
        raise ModelError(
            f"marginalize: the enumerated sites lie in {len(groups)} different plates/scans "
            f"({[fmt_addr(p) for _, p in groups]}); enumerate the sites of one plate or scan at a "
            "time (nest marginalize calls on separate sub-models).")
    if int(np.prod([len(s.support) for s in glob])) > MAX_GLOBAL:
        raise ModelError(
            f"marginalize: the sites {[fmt_addr(s.path) for s in glob]} outside any plate have "
            f"more than {MAX_GLOBAL} joint values; put repeated sites in ppl.vmap/ppl.repeat.")
    if not groups:
        return _Plan(tuple(glob), (), "none", (), 0)
    (kind, prefix), members = next(iter(groups.items()))
    local = tuple(s for s, _ in members)
    n = members[0][1]
    j = int(np.prod([len(s.support) for s in local]))
    if kind == "scan" and (len(local) > 1 or j > MAX_SCAN):
        raise ModelError(
            f"marginalize: in the scan at {fmt_addr(prefix)} enumerate one state site with at most "
            f"{MAX_SCAN} values (got {[fmt_addr(s.path) for s in local]}, {j} joint values).")
    if kind == "plate" and j > MAX_LOCAL:
        raise ModelError(
            f"marginalize: the sites {[fmt_addr(s.path) for s in local]} of the plate at "
            f"{fmt_addr(prefix)} have {j} > {MAX_LOCAL} joint values per copy.")
    return _Plan(tuple(glob), local, kind, prefix, n)


def _combo_index(sites):
    """Support indices of the joint values of ``sites``: (J, len(sites))."""
    rows = list(itertools.product(*[range(len(s.support)) for s in sites]))
    return np.array(rows, dtype=int).reshape(len(rows), len(sites))


def _combos(sites):
    """Joint values of ``sites``: a list (one per site) of arrays of shape (J, *event)."""
    idx = _combo_index(sites)
    return [s.support[idx[:, i]] for i, s in enumerate(sites)]


def _check_seq(T, K):
    t = np.arange(T)
    return (t * (t + 1) // 2 + t // 3) % K


def _configs(plan):
    """Values of every enumerated site for each model run: {path: (G*J, ...)}, and (G, J)."""
    g_vals = _combos(plan.glob) if plan.glob else []
    G = len(g_vals[0]) if g_vals else 1
    if plan.kind == "plate":
        l_vals = [np.broadcast_to(v[:, None], (len(v), plan.n) + v.shape[1:]) for v in _combos(plan.local)]
    elif plan.kind == "scan":
        sup = plan.local[0].support
        K, T = len(sup), plan.n
        even = np.arange(T) % 2 == 0
        pats = [np.where(even, a, b) for a in range(K) for b in range(K)] + [_check_seq(T, K)]
        l_vals = [sup[np.stack(pats)]]
    else:
        l_vals = []
    J = len(l_vals[0]) if l_vals else 1
    out = {}
    for s, v in zip(plan.glob, g_vals):
        out[s.path] = np.repeat(v, J, axis=0)
    for s, v in zip(plan.local, l_vals):
        out[s.path] = np.tile(v, (G,) + (1,) * (v.ndim - 1))
    return out, G, J


# ------------------------------------------------------------------------------ energies
def _leaf(v, lead):
    """A score leaf summed to its leading ``lead`` axes (a Masked leaf counts where present)."""
    if isinstance(v, Masked):
        val, flag = jnp.asarray(v.value), jnp.asarray(v.flag)
        flag = jnp.reshape(flag, flag.shape + (1,) * (val.ndim - flag.ndim))
        v = jnp.where(flag, val, 0.0)
    v = jnp.asarray(v)
    return jnp.sum(v, axis=tuple(range(lead, v.ndim)))


def _plain(v):
    """A score leaf as an array (a Masked leaf is 0 where absent)."""
    if isinstance(v, Masked):
        val, flag = jnp.asarray(v.value), jnp.asarray(v.flag)
        return jnp.where(jnp.reshape(flag, flag.shape + (1,) * (val.ndim - flag.ndim)), val, 0.0)
    return jnp.asarray(v)


def _under(path, prefixes):
    return any(path[: len(p)] == p for p in prefixes)


def _sum_under(scores, paths):
    """The summed scores of the sites under ``paths``."""
    return sum((jnp.sum(_plain(v)) for p, v in scores.leaves() if _under(p, paths)), jnp.zeros(()))


def _energies(plan, scores, excluded):
    """(outer, group[n]) log densities of one run, leaving out the sites under ``excluded``."""
    outer, group = jnp.zeros(()), jnp.zeros((max(plan.n, 1),))
    for path, v in scores.leaves():
        if _under(path, excluded):
            continue
        if plan.kind != "none" and path[: len(plan.prefix)] == plan.prefix:
            group = group + _leaf(v, 1)
        else:
            outer = outer + _leaf(v, 0)
    return outer, group


def _fail(bad, plan):
    if debug_enabled():
        def host(b):
            if b:
                raise_from_callback(ModelError(
                    f"marginalize: {[fmt_addr(s.path) for s in plan.glob + plan.local]}: a site "
                    f"outside the {plan.kind} at {fmt_addr(plan.prefix)} depends on an enumerated "
                    "value, or a scan carry remembers more than the current state; the sum over "
                    "the enumerated values is not exact (the density is NaN)."))
        debug_check(host, bad)


class _Tables:
    """Log tables of one evaluation (enough for the marginal, its per-copy parts and sampling)."""

    def __init__(self, plan, outer, group):  # outer (G, J), group (G, J, n)
        self.plan = plan
        G = outer.shape[0]
        tol = 1e-4 * (1.0 + jnp.abs(outer[:, :1]))
        bad = jnp.any(jnp.abs(outer - outer[:, :1]) > tol) & jnp.all(jnp.isfinite(outer[:, :1]))
        self.outer = outer[:, 0]
        if plan.kind == "plate":
            self.local = group  # (G, J, N)
            self.parts = logsumexp(group, axis=1)  # (G, N)
        elif plan.kind == "scan":
            K = len(plan.local[0].support)
            T = plan.n
            A = group[:, : K * K].reshape(G, K, K, T)
            odd = (jnp.arange(T) % 2 == 1)[None, :, None, None]
            self.init = A[:, :, 0, 0]  # (G, K)
            self.trans = jnp.where(odd, jnp.moveaxis(A, 3, 1), jnp.moveaxis(A, 3, 1).swapaxes(2, 3))  # (G,T,K,K)

            def fwd(alpha, S):
                new = logsumexp(alpha[:, :, None] + S, axis=1)
                return new, new

            _, rest = jax.lax.scan(fwd, self.init, jnp.moveaxis(self.trans[:, 1:], 1, 0))
            self.alpha = jnp.concatenate([self.init[None], rest], 0).swapaxes(0, 1)  # (G, T, K)
            lz = logsumexp(self.alpha, axis=2)  # (G, T)
            self.parts = jnp.concatenate([lz[:, :1], lz[:, 1:] - lz[:, :-1]], axis=1)
            r = _check_seq(T, K)
            pred = self.init[:, r[0]] + jnp.sum(self.trans[:, jnp.arange(1, T), r[:-1], r[1:]], axis=1)
            actual = jnp.sum(group[:, K * K], axis=1)
            bad = bad | jnp.any((jnp.abs(pred - actual) > 1e-4 * (1.0 + jnp.abs(actual))) & jnp.isfinite(actual))
        else:
            self.parts = jnp.zeros((G, 0))
        self.by_global = self.outer + jnp.sum(self.parts, axis=1)  # (G,)
        self.logz = jnp.where(bad, jnp.nan, logsumexp(self.by_global))
        self.bad = bad
        _fail(bad, plan)


def _evaluate(gf, choices, args, excluded=()):
    """The marginal log density tables of the complete remaining ``choices`` (leaving out the
    scores of sites under ``excluded``, for proposal densities)."""
    plan = gf._plan(args)
    cfg, G, J = _configs(plan)
    rest = [(p, v) for p, v in choices.leaves()]
    for p, v in rest:
        if isinstance(v, Masked):
            raise ModelError(f"{gf.name}: masked values (at {fmt_addr(p)}) are not supported.")

    def run(vals):
        chm = ChoiceMap.from_leaves(rest + list(vals.items()))
        tr, _ = gf.model.generate(jax.random.key(0), chm, *args)
        return _energies(plan, tr.get_scores(), excluded)

    with intercept(_Hide()):
        outer, group = jax.vmap(run)({p: jnp.asarray(v) for p, v in cfg.items()})
    return plan, _Tables(plan, outer.reshape(G, J), group.reshape(G, J, -1))


def _sample_enumerated(key, tab):
    """A draw of the enumerated sites from their exact posterior given the other choices."""
    plan = tab.plan
    kg, kl = jax.random.split(key)
    g = jax.random.categorical(kg, tab.by_global)
    out = {}
    if plan.glob:
        for s, v in zip(plan.glob, _combos(plan.glob)):
            out[s.path] = jnp.asarray(v)[g]
    if plan.kind == "plate":
        j = jax.random.categorical(kl, jnp.moveaxis(tab.local[g], 0, -1))  # (N,)
        for s, v in zip(plan.local, _combos(plan.local)):
            out[s.path] = jnp.asarray(v)[j]
    elif plan.kind == "scan":
        alpha, trans = tab.alpha[g], tab.trans[g]
        ks = jax.random.split(kl, plan.n)
        last = jax.random.categorical(ks[-1], alpha[-1])

        def back(nxt, x):
            k, a, S = x
            z = jax.random.categorical(k, a + S[:, nxt])
            return z, z

        _, zs = jax.lax.scan(back, last, (ks[:-1], alpha[:-1], trans[1:]), reverse=True)
        out[plan.local[0].path] = jnp.asarray(plan.local[0].support)[jnp.append(zs, last)]
    return out


# ------------------------------------------------------------------------------ the GF
@trace_dataclass
class MarginalTrace(Trace):
    """The trace of :class:`MarginalGF`: the remaining choices, their per-site scores and the
    marginal log density. ``retval`` is the model's return value with the enumerated sites at a
    draw from their posterior given the other choices."""

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


@dataclasses.dataclass(frozen=True, eq=True)
class MarginalGF(GenerativeFunction):
    """``model`` with the discrete sites at ``addrs`` summed out (see :func:`marginalize`)."""

    model: Any
    addrs: tuple

    @property
    def name(self):
        return f"marginalize({self.model.name}, {', '.join(fmt_addr(a) for a in self.addrs)})"

    def _plan(self, args):
        return _plan(self.model, self.addrs, args)

    def _drop(self, choices):
        return ChoiceMap.from_leaves([(p, v) for p, v in choices.leaves() if p not in self.addrs])

    def _check_given(self, chm, what):
        for p, _ in chm.leaves():
            if _under(p, self.addrs) or any(a[: len(p)] == p for a in self.addrs):
                raise AddressError(
                    f"{self.name}.{what}: a value was given at {fmt_addr(p)}, which is (or holds) an "
                    "enumerated site; the marginal model has no choice there.")
            if isinstance(chm.get_submap(p).raw_value(), Masked):
                raise ModelError(f"{self.name}.{what}: masked values (at {fmt_addr(p)}) are not supported.")

    def _trace(self, key, choices, args, tab):
        """The marginal trace of ``choices``: per-site scores are the model's, except that each copy
        (step) of the plate (scan) carries its marginal log density on its first remaining site."""
        plan = tab.plan
        zs = _sample_enumerated(key, tab)
        chm = ChoiceMap.from_leaves(list(choices.leaves()) + list(zs.items()))
        with intercept(_Hide()):
            tr, _ = self.model.generate(jax.random.key(0), chm, *args)
        in_group = lambda p: plan.kind != "none" and p[: len(plan.prefix)] == plan.prefix  # noqa: E731
        out = [(p, _plain(v)) for p, v in tr.get_scores().leaves() if p not in self.addrs]
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
        with intercept(_Hide(None if hide_all else self.addrs)):
            return getattr(self.model, method)(*a)

    def _simulate(self, key, *args):
        k1, k2 = jax.random.split(key)
        choices = self._drop(self._front("simulate", k1, *args).get_choices())
        _, tab = _evaluate(self, choices, args)
        return self._trace(k2, choices, args, tab)

    def _assess(self, choices, *args):
        self._check_given(choices, "assess")
        tr_f, w_f = self._front("generate", jax.random.key(0), choices, *args)
        extra = w_f - _sum_under(tr_f.get_scores(), [p for p, _ in choices.leaves()])
        choices = self._drop(tr_f.get_choices())
        _, tab = _evaluate(self, choices, args)
        return tab.logz + extra, self._trace(jax.random.key(0), choices, args, tab).retval

    def _propose(self, key, fixed, args, hide_all=False):
        """Sample the choices not in ``fixed`` from the model (enumerated sites dropped): returns
        (trace, log p_marginal - log q_marginal(fresh choices) + interceptors' extra terms)."""
        k1, k2 = jax.random.split(key)
        tr_f, w_f = self._front("generate", k1, fixed, *args, hide_all=hide_all)
        fixed_paths = [p for p, _ in fixed.leaves()]
        extra = w_f - _sum_under(tr_f.get_scores(), fixed_paths)
        choices = self._drop(tr_f.get_choices())
        _, tab = _evaluate(self, choices, args)
        _, tab_q = _evaluate(self, choices, args, excluded=fixed_paths)
        return self._trace(k2, choices, args, tab), tab.logz - tab_q.logz + extra

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
        k1, k2 = jax.random.split(key)
        joint = trace.joint
        tr_f, w_f, discard = self._front("update", k1, joint, constraints, *args)
        extra = w_f - (tr_f.get_score() - joint.get_score())
        new = self._drop(tr_f.get_choices())
        _, tab = _evaluate(self, new, args)
        return self._trace(k2, new, args, tab), tab.logz - trace.get_score() + extra, discard

    def _regenerate(self, key, trace, selection, *args):
        old = trace.get_choices()
        keep = old.filter(~selection)
        kept = [p for p, _ in keep.leaves()]
        new_tr, w_new = self._propose(key, keep, args, hide_all=True)
        _, tab_q_old = _evaluate(self, old, args, excluded=kept)
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
    the posterior probabilities of each support value (per copy/step for the group's site, a
    leading axis of joint values for sites outside any plate).

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
        plan, tab = _evaluate(marginal, choices, args)
        if not probs:
            return ChoiceMap.from_leaves(list(_sample_enumerated(key, tab).items()))
        out = []
        pg = jax.nn.softmax(tab.by_global)  # (G,)
        g_idx = _combo_index(plan.glob)
        for i, s in enumerate(plan.glob):
            out.append((s.path, pg @ jax.nn.one_hot(g_idx[:, i], len(s.support))))
        if plan.kind == "plate":
            post = jnp.einsum("g,gjn->nj", pg, jax.nn.softmax(tab.local, axis=1))
            l_idx = _combo_index(plan.local)
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
