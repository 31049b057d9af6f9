"""Tables of the exact enumeration behind :mod:`inference.enum` (internal): which sites are
enumerated and how (the plan), the model runs over their values, the per-copy (plate) and
forward-algorithm (scan) sums, and exact posterior draws of the enumerated sites.

Example:
    >>> import numpy as np
    >>> combo_index([Site(("a",), np.arange(2)), Site(("b",), np.arange(3))]).shape
    (6, 2)
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from ppl.choicemap import ChoiceMap, Masked
from ppl.combinators import ScanGF, VmapGF
from ppl.core import Interceptor, intercept
from ppl.dist_checks import debug_check
from ppl.errors import AddressError, ModelError, fmt_addr
from ppl.staging import debug_enabled, raise_from_callback

MAX_GLOBAL = 4096  # joint values of the enumerated sites outside any combinator
MAX_LOCAL = 1024  # joint values per copy of the enumerated sites of one plate
MAX_SCAN = 64  # states of an enumerated scan site (K^2 + 1 model runs)


# ------------------------------------------------------------------------------ the plan
@dataclasses.dataclass(frozen=True)
class Site:
    path: tuple
    support: np.ndarray  # (K, *event), the site's dtype


@dataclasses.dataclass(frozen=True)
class Plan:
    glob: tuple  # Site outside any combinator
    local: tuple  # Site inside the group
    kind: str  # "none", "plate" or "scan"
    prefix: tuple  # the group's address prefix
    n: int  # copies / steps of the group


class Hide(Interceptor):
    """Plain sampling/observing at ``paths`` (every site when None), hiding those sites from the
    interceptors of the enclosing inference code: they see the remaining choices once (in the
    front run of each method), never the enumerated sites or the enumeration runs."""

    def __init__(self, paths=None):
        self.paths = None if paths is None else set(paths)

    def handles(self, path):
        return self.paths is None or path in self.paths


class _Capture(Hide):
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


def make_plan(model, paths, args) -> Plan:
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
        site = Site(path, sup)
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
            f"({', '.join(fmt_addr(p) for _, p in groups)}); enumerate the sites of one plate or scan at a "
            "time (nest marginalize calls on separate sub-models).")
    if int(np.prod([len(s.support) for s in glob])) > MAX_GLOBAL:
        raise ModelError(
            f"marginalize: the sites {', '.join(fmt_addr(s.path) for s in glob)} outside any plate have "
            f"more than {MAX_GLOBAL} joint values; put repeated sites in ppl.vmap/ppl.repeat.")
    if not groups:
        return Plan(tuple(glob), (), "none", (), 0)
    (kind, prefix), members = next(iter(groups.items()))
    local = tuple(s for s, _ in members)
    n = members[0][1]
    j = int(np.prod([len(s.support) for s in local]))
    if kind == "scan" and (len(local) > 1 or j > MAX_SCAN):
        raise ModelError(
            f"marginalize: in the scan at {fmt_addr(prefix)} enumerate one state site with at most "
            f"{MAX_SCAN} values (got {', '.join(fmt_addr(s.path) for s in local)}, {j} joint values).")
    if kind == "plate" and j > MAX_LOCAL:
        raise ModelError(
            f"marginalize: the sites {', '.join(fmt_addr(s.path) for s in local)} of the plate at "
            f"{fmt_addr(prefix)} have {j} > {MAX_LOCAL} joint values per copy.")
    return Plan(tuple(glob), local, kind, prefix, n)


def combo_index(sites):
    """Support indices of the joint values of ``sites``: (J, len(sites))."""
    rows = list(itertools.product(*[range(len(s.support)) for s in sites]))
    return np.array(rows, dtype=int).reshape(len(rows), len(sites))


def _combos(sites):
    """Joint values of ``sites``: a list (one per site) of arrays of shape (J, *event)."""
    idx = combo_index(sites)
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


def plain(v):
    """A score leaf as an array (a Masked leaf is 0 where absent)."""
    if isinstance(v, Masked):
        val, flag = jnp.asarray(v.value), jnp.asarray(v.flag)
        return jnp.where(jnp.reshape(flag, flag.shape + (1,) * (val.ndim - flag.ndim)), val, 0.0)
    return jnp.asarray(v)


def under(path, prefixes):
    return any(path[: len(p)] == p for p in prefixes)


def sum_under(scores, paths):
    """The summed scores of the sites under ``paths``."""
    return sum((jnp.sum(plain(v)) for p, v in scores.leaves() if under(p, paths)), jnp.zeros(()))


def _energies(plan, scores, excluded):
    """(outer, group[n]) log densities of one run, leaving out the sites under ``excluded``."""
    outer, group = jnp.zeros(()), jnp.zeros((max(plan.n, 1),))
    for path, v in scores.leaves():
        if under(path, excluded):
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
                    f"marginalize: {', '.join(fmt_addr(s.path) for s in plan.glob + plan.local)}: a site "
                    f"outside the {plan.kind} at {fmt_addr(plan.prefix)} depends on an enumerated "
                    "value, or a scan carry remembers more than the current state; the sum over "
                    "the enumerated values is not exact (the density is NaN)."))
        debug_check(host, bad)


class Tables:
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


def evaluate(gf, choices, args, excluded=()):
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

    with intercept(Hide()):
        outer, group = jax.vmap(run)({p: jnp.asarray(v) for p, v in cfg.items()})
    return plan, Tables(plan, outer.reshape(G, J), group.reshape(G, J, -1))


def sample_enumerated(key, tab):
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
