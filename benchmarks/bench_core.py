"""Modeling-core benchmarks: GFI overhead vs hand-written JAX, and first-call (trace + compile) time.

1. Steady state: jitted ``simulate``, ``assess`` and ``generate`` of a linear regression (1,000
   observations) and of an HMM written with ``ppl.scan`` (200 steps), against the same computation
   written by hand in JAX with numpyro densities. Candidates are timed interleaved in one process
   (see ``harness.time_interleaved``); the table reports ratios ppl / hand-written.
2. First call: trace + compile + run of ``simulate``, ``generate`` and ``update`` for models with
   10, 100 and 1,000 scalar sites created in a Python loop.

Run: ``python -m benchmarks.bench_core`` (writes ``benchmarks/results/bench_core.{md,json}``).
"""

from __future__ import annotations

import argparse
import re
import time

import jax
import jax.numpy as jnp
import numpyro.distributions as nd

import ppl
from ppl import ChoiceMap, gen, select

from .harness import block, time_rounds, write_results

# ------------------------------------------------------------------------------ regression
N_OBS = 1000
XS = jnp.linspace(-3.0, 3.0, N_OBS)


@gen
def regression(xs):
    slope = ppl.normal(0.0, 1.0) @ "slope"
    intercept = ppl.normal(0.0, 2.0) @ "intercept"
    noise = ppl.gamma(2.0, 2.0) @ "noise"
    return ppl.normal(slope * xs + intercept, noise) @ "ys"


def hand_reg_simulate(key, xs):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    d_s, d_i, d_n = nd.Normal(0.0, 1.0), nd.Normal(0.0, 2.0), nd.Gamma(2.0, 2.0)
    s, i, n = d_s.sample(k1), d_i.sample(k2), d_n.sample(k3)
    d_y = nd.Normal(s * xs + i, n)
    ys = d_y.sample(k4)
    score = d_s.log_prob(s) + d_i.log_prob(i) + d_n.log_prob(n) + d_y.log_prob(ys).sum()
    return {"slope": s, "intercept": i, "noise": n, "ys": ys}, score


def hand_reg_logp(s, i, n, ys, xs):
    return (nd.Normal(0.0, 1.0).log_prob(s) + nd.Normal(0.0, 2.0).log_prob(i) + nd.Gamma(2.0, 2.0).log_prob(n)
            + nd.Normal(s * xs + i, n).log_prob(ys).sum())


def hand_reg_assess(ch, xs):
    return hand_reg_logp(ch["slope"], ch["intercept"], ch["noise"], ch["ys"], xs)


def hand_reg_generate(key, ys, xs):
    k1, k2, k3 = jax.random.split(key, 3)
    s = nd.Normal(0.0, 1.0).sample(k1)
    i = nd.Normal(0.0, 2.0).sample(k2)
    n = nd.Gamma(2.0, 2.0).sample(k3)
    lik = nd.Normal(s * xs + i, n).log_prob(ys).sum()
    score = nd.Normal(0.0, 1.0).log_prob(s) + nd.Normal(0.0, 2.0).log_prob(i) + nd.Gamma(2.0, 2.0).log_prob(n) + lik
    return {"slope": s, "intercept": i, "noise": n, "ys": ys}, score, lik


# ------------------------------------------------------------------------------ HMM
T = 200
LOG_TRANS = jnp.log(jnp.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.05, 0.15, 0.8]]))
MEANS = jnp.array([-2.0, 0.0, 2.0])


@gen
def hmm_step(z, _):
    z = ppl.categorical(logits=LOG_TRANS[z]) @ "z"
    ppl.normal(MEANS[z], 0.7) @ "y"
    return z, None


HMM = ppl.scan(hmm_step, length=T)


def hand_hmm_simulate(key, z0):
    def step(z, k):
        k1, k2 = jax.random.split(k)
        dz = nd.Categorical(logits=LOG_TRANS[z])
        z2 = dz.sample(k1)
        dy = nd.Normal(MEANS[z2], 0.7)
        y = dy.sample(k2)
        return z2, (z2, y, dz.log_prob(z2) + dy.log_prob(y))

    _, (zs, ys, lps) = jax.lax.scan(step, z0, jax.random.split(key, T))
    return {"z": zs, "y": ys}, lps.sum()


def hand_hmm_assess(ch, z0):
    def step(z, zy):
        z2, y = zy
        return z2, nd.Categorical(logits=LOG_TRANS[z]).log_prob(z2) + nd.Normal(MEANS[z2], 0.7).log_prob(y)

    _, lps = jax.lax.scan(step, z0, (ch["z"], ch["y"]))
    return lps.sum()


def hand_hmm_generate(key, ys, z0):
    def step(z, ky):
        k, y = ky
        dz = nd.Categorical(logits=LOG_TRANS[z])
        z2 = dz.sample(k)
        ly = nd.Normal(MEANS[z2], 0.7).log_prob(y)
        return z2, (z2, dz.log_prob(z2) + ly, ly)

    _, (zs, lps, lys) = jax.lax.scan(step, z0, (jax.random.split(key, T), ys))
    return {"z": zs, "y": ys}, lps.sum(), lys.sum()


# ------------------------------------------------------------------------------ steady state
def steady_state(n_rounds: int, n_inner: int) -> list[dict]:
    key = jax.random.key(0)
    rows = []
    z0 = jnp.asarray(0)

    reg_tr = regression.simulate(key, XS)
    reg_ch = reg_tr.choices
    reg_dict = {a: reg_ch[a] for a in ("slope", "intercept", "noise", "ys")}
    reg_obs = ChoiceMap({"ys": reg_ch["ys"]})
    hmm_tr = HMM.simulate(key, z0, None)
    hmm_ch = hmm_tr.choices
    hmm_dict = {"z": hmm_ch["z"], "y": hmm_ch["y"]}
    hmm_obs = ChoiceMap({"y": hmm_ch["y"]})

    cases = {
        ("regression", "simulate"): (jax.jit(lambda k, xs: _cs(regression.simulate(k, xs))), (key, XS),
                                     jax.jit(hand_reg_simulate), (key, XS)),
        ("regression", "assess"): (jax.jit(lambda ch, xs: regression.assess(ch, xs)[0]), (reg_ch, XS),
                                   jax.jit(hand_reg_assess), (reg_dict, XS)),
        ("regression", "generate"): (jax.jit(lambda k, o, xs: _csw(*regression.generate(k, o, xs))), (key, reg_obs, XS),
                                     jax.jit(hand_reg_generate), (key, reg_ch["ys"], XS)),
        ("hmm", "simulate"): (jax.jit(lambda k, z: _cs(HMM.simulate(k, z, None))), (key, z0),
                              jax.jit(hand_hmm_simulate), (key, z0)),
        ("hmm", "assess"): (jax.jit(lambda ch, z: HMM.assess(ch, z, None)[0]), (hmm_ch, z0),
                            jax.jit(hand_hmm_assess), (hmm_dict, z0)),
        ("hmm", "generate"): (jax.jit(lambda k, o, z: _csw(*HMM.generate(k, o, z, None))), (key, hmm_obs, z0),
                              jax.jit(hand_hmm_generate), (key, hmm_ch["y"], z0)),
    }
    fns = {}
    for (model, method), (f_ppl, a_ppl, f_hand, a_hand) in cases.items():
        fns[(model, method, "ppl")] = (lambda f=f_ppl, a=a_ppl: f(*a))
        fns[(model, method, "hand")] = (lambda f=f_hand, a=a_hand: f(*a))
        fns[(model, method, "ppl_flat")] = _flat(f_ppl, a_ppl)
        fns[(model, method, "hand_flat")] = _flat(f_hand, a_hand)
    times = _time_interleaved_min(fns, n_rounds=n_rounds, n_inner=n_inner)
    for model, method in cases:
        tp, th = times[(model, method, "ppl")], times[(model, method, "hand")]
        fp, fh = times[(model, method, "ppl_flat")], times[(model, method, "hand_flat")]
        f_ppl, a_ppl, f_hand, a_hand = cases[(model, method)]
        rows.append({"benchmark": f"{model}.{method}", "ppl_us": tp * 1e6, "hand_us": th * 1e6,
                     "ratio": tp / th, "ppl_flat_us": fp * 1e6, "hand_flat_us": fh * 1e6,
                     "ratio_flat": fp / fh, "ppl_hlo_ops": _hlo_ops(f_ppl, a_ppl),
                     "hand_hlo_ops": _hlo_ops(f_hand, a_hand)})
    return rows


def _hlo_ops(f, args) -> int:
    """Number of instructions in the optimized (compiled) HLO: a load-independent size measure."""
    txt = jax.jit(f).lower(*args).compile().as_text()
    return len(re.findall(r"^\s+(?:ROOT )?%\S+ = ", txt, re.M))


def _cs(tr):
    """The outputs the hand-written versions return: the choices and the score."""
    return tr.choices, tr.score


def _csw(tr, w):
    return tr.choices, tr.score, w


def _time_interleaved_min(fns, n_rounds, n_inner):
    """Like ``harness.time_interleaved`` but the minimum over rounds: on a shared, loaded machine
    the fastest round estimates the uncontended cost (the median mostly measures other load)."""
    return {k: min(v) for k, v in time_rounds(fns, n_rounds, n_inner).items()}


def _flat(f, args):
    """The same jitted computation called with the arguments' flat leaves (no Python pytree
    flattening of ChoiceMaps/traces at dispatch): isolates the compiled code."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    g = jax.jit(lambda ls: jax.tree_util.tree_leaves(f(*jax.tree_util.tree_unflatten(treedef, ls))))
    return lambda: g(leaves)


# ------------------------------------------------------------------------------ first call
def chain_model(n: int):
    @gen
    def many():
        x = jnp.zeros(())
        for i in range(n):
            x = ppl.normal(0.9 * x, 1.0) @ f"x{i}"
        return x

    return many


def hand_chain(n: int):
    """The chain model written by hand: one batched key split, numpyro densities."""

    def simulate(key):
        ks = jax.random.split(key, n)
        x, score, xs = jnp.zeros(()), jnp.zeros(()), []
        for i in range(n):
            d = nd.Normal(0.9 * x, 1.0)
            x = d.sample(ks[i])
            score = score + d.log_prob(x)
            xs.append(x)
        return xs, score

    return simulate


def hand_chain_generate(n: int):
    """Hand-written generate of the chain with the even sites observed at 0.1 (one batched key
    split; the odd sites sampled; weight = the observed sites' log densities)."""

    def generate(key):
        ks = jax.random.split(key, n)
        x, score, weight, xs = jnp.zeros(()), jnp.zeros(()), jnp.zeros(()), []
        for i in range(n):
            d = nd.Normal(0.9 * x, 1.0)
            if i % 2 == 0:
                x = jnp.float32(0.1)
                lp = d.log_prob(x)
                weight = weight + lp
            else:
                x = d.sample(ks[i])
                lp = d.log_prob(x)
            score = score + lp
            xs.append(x)
        return xs, score, weight

    return generate


def hand_chain_update(n: int):
    """Hand-written update of the chain's first site to 0.5: every site's density recomputed
    from the old values (a list of scalars, as a trace holds them); weight = new - old score."""

    def update(xs, old_score):
        x_prev, score, new = jnp.zeros(()), jnp.zeros(()), []
        for i in range(n):
            x = jnp.float32(0.5) if i == 0 else xs[i]
            score = score + nd.Normal(0.9 * x_prev, 1.0).log_prob(x)
            new.append(x)
            x_prev = x
        return new, score, score - old_score

    return update


def _clear_structure_caches():
    """Forget ppl's trace-time caches of model structure (the addresses a body visits, the site
    dependencies of update), so that a first call pays for finding them."""
    import ppl.changes
    import ppl.sitekeys

    ppl.sitekeys._ADDRESS_CACHE.clear()
    ppl.changes._DEPS.clear()


def first_call(sizes, max_compile: int) -> list[dict]:
    """Trace time (to StableHLO) and first-call time (trace + compile + run) per method."""
    rows = []
    key = jax.random.key(0)
    for n in sizes:
        m = chain_model(n)
        obs = ChoiceMap({f"x{i}": 0.1 for i in range(0, n, 2)})
        tr_struct = jax.eval_shape(lambda k: m.simulate(k), key)
        tr0 = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), tr_struct)
        calls = {
            "simulate": (lambda k: m.simulate(k), (key,)),
            "generate": (lambda k, o: m.generate(k, o), (key, obs)),
            "update": (lambda k, t: m.update(k, t, ChoiceMap({"x0": 0.5})), (key, tr0)),
            "hand_simulate": (hand_chain(n), (key,)),
            "hand_generate": (hand_chain_generate(n), (key,)),
            "hand_update": (hand_chain_update(n), ([jnp.zeros(())] * n, jnp.zeros(()))),
        }
        row = {"sites": n}
        for name, (f, args) in calls.items():
            jax.clear_caches()
            _clear_structure_caches()
            t0 = time.perf_counter()
            lowered = jax.jit(f).lower(*args)
            row[f"{name}_trace_s"] = time.perf_counter() - t0
            if n <= max_compile:
                jax.clear_caches()
                _clear_structure_caches()
                t0 = time.perf_counter()
                block(jax.jit(f)(*args))
                row[f"{name}_first_call_s"] = time.perf_counter() - t0
            else:
                row[f"{name}_first_call_s"] = float("nan")
            del lowered
        for name in ("simulate", "generate", "update"):
            row[f"{name}_ratio"] = row[f"{name}_first_call_s"] / row[f"hand_{name}_first_call_s"]
        rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds and sizes (smoke run)")
    p.add_argument("--skip-first-call", action="store_true", help="only the steady-state table")
    p.add_argument("--only-first-call", action="store_true", help="only the first-call table")
    p.add_argument("--max-compile", type=int, default=1000,
                   help="largest model whose first call (with XLA compile) is timed; larger ones: trace only")
    args = p.parse_args(argv)
    n_rounds, n_inner = (5, 5) if args.quick else (40, 20)
    sizes = (10, 100) if args.quick else (10, 100, 1000)
    rows = None if args.only_first_call else steady_state(n_rounds, n_inner)
    notes = (
        "Steady state: microseconds per call (minimum over interleaved rounds) of jitted functions, ppl vs hand-written JAX with "
        f"numpyro densities, timed interleaved ({n_rounds} rounds x {n_inner} calls). Regression: {N_OBS} "
        f"observations; HMM: ppl.scan over {T} steps, 3 states. Target ratio <= 1.05. `ratio`: end to end "
        "(includes Python dispatch: flattening ChoiceMap/Trace arguments, ~5 us per call); `ratio_flat`: "
        "both called with flat array leaves and flat outputs, i.e. the compiled code alone; *_hlo_ops: "
        "instructions in the optimized HLO (independent of machine load). The ppl functions return what the "
        "hand-written ones return (choices, score, weight); returning the whole Trace also outputs copies of "
        "the arguments and return value (e.g. +1000 floats each for the regression). Timings were taken on a shared "
        "2-core machine under heavy load from other processes; differences below ~15% are within noise."
    )
    if rows is not None:
        write_results("bench_core", rows, notes)
    if args.skip_first_call:
        return
    fc = first_call(sizes, args.max_compile)
    write_results("bench_core_first_call", fc, "Chain model x_i ~ normal(0.9 x_{i-1}, 1) with n scalar sites "
                  "created in a Python loop. *_trace_s: Python tracing to StableHLO (the part ppl adds); "
                  "*_first_call_s: trace + XLA compile + run, caches cleared (nan: not run, see "
                  "--max-compile). hand_simulate is the same model hand-written in JAX (one batched key "
                  "split, numpyro densities); hand_generate and hand_update likewise (even sites observed; update of "
                  "x0 from a trace's per-site values); *_ratio = ppl / hand first call. Targets at 1000 sites: "
                  "simulate <= 0.25x, generate and update <= 0.5x.")


if __name__ == "__main__":
    main()
