"""SMC benchmarks: the ppl bootstrap particle filter vs the same filter hand-written in JAX.

Run ``python -m benchmarks.bench_smc`` (add ``--quick`` for a smaller sweep). Measured in one
process, interleaved (see :mod:`benchmarks.harness`):

1. 1-D linear-Gaussian SSM, T=100, N=1000, systematic resampling every step: steady-state time per
   run and first-call time (trace + compile + run) of ``smc.particle_filter`` (with and without
   the per-step particle history) vs a hand-written ``lax.scan`` filter; also a variant that
   vmaps the step's ``generate`` over ``N`` split keys (one key per particle) instead of lane keys.
2. Resampling schemes at N = 1e3, 1e4, 1e5 (and ``jax.random.categorical(shape=(N,))`` at 1e3
   for contrast).
3. Scaling of the filter in N (100 .. 100k, T=100) and in T (10 .. 1000, N=1000).

Results are printed and written to ``benchmarks/results/bench_smc*.md|json``.
"""

from __future__ import annotations

import statistics
import sys
import time

import jax
import jax.numpy as jnp

import ppl
from benchmarks.harness import time_first_call, time_interleaved, time_rounds, write_results
from inference import smc
from inference.smc.resampling import resample_indices

A, Q, R = 0.9, 1.0, 0.5


@ppl.gen
def step(x, _):
    x = ppl.normal(A * x, Q) @ "x"
    ppl.normal(x, R) @ "y"
    return x, None


def data(T, seed=1):
    return jax.random.normal(jax.random.key(seed), (T,))


def hand_filter(T, N):
    """The bootstrap filter written directly in JAX (what a user would write by hand)."""

    def run(key, ys):
        def body(c, inp):
            x, lw, lz = c
            t, k, y = inp
            k1, k2 = jax.random.split(k)
            lse = jax.nn.logsumexp(lw)
            w = jnp.exp(lw - lse)
            u = (jnp.arange(N) + jax.random.uniform(k1)) / N
            idx = jnp.clip(jnp.searchsorted(jnp.cumsum(w), u), 0, N - 1)
            need = t > 0
            x = jnp.where(need, x[idx], x)
            lz = jnp.where(need, lz + lse - jnp.log(N), lz)
            lw = jnp.where(need, 0.0, lw)
            x = A * x + Q * jax.random.normal(k2, (N,))
            lw = lw + jax.scipy.stats.norm.logpdf(y, x, R)
            return (x, lw, lz), None

        init = (jnp.zeros(N), jnp.zeros(N), jnp.zeros(()))
        (x, lw, lz), _ = jax.lax.scan(body, init, (jnp.arange(T), jax.random.split(key, T), ys))
        return lz + jax.nn.logsumexp(lw) - jnp.log(N)

    return jax.jit(run)


def split_key_filter(T, N):
    """The GFI filter but with one key per particle (``vmap`` over ``split(key, N)``)."""
    import inference.smc.filters as F

    def propagate_split(step_gf, key, carries, x_t, obs_t, n, proposal=None):
        def one(k, c):
            tr, w = step_gf.generate(k, obs_t, c, x_t)
            return tr.choices, tr.retval[0], w

        return jax.vmap(one)(jax.random.split(ppl.keys.raw(key), n), carries)  # raw: the step's key

    def run(key, ys):
        orig = F.propagate
        F.propagate = propagate_split
        try:
            return smc.particle_filter(key, ppl.scan(step, length=T), (0.0, None), ppl.ChoiceMap({"y": ys}), N,
                                       resampling="systematic", ess_threshold=1.0, history=False).log_z
        finally:
            F.propagate = orig

    return jax.jit(run)


def ppl_filter(T, N, history=True):
    model = ppl.scan(step, length=T)

    def run(key, ys):
        return smc.particle_filter(key, model, (0.0, None), ppl.ChoiceMap({"y": ys}), N, history=history).log_z

    return run


def paired_ratios(fns, base, n_rounds, n_inner):
    """Median time per call of each thunk and the median over rounds of its ratio to ``base``
    measured in the same round (robust to load drift on a shared machine)."""
    samples = time_rounds(fns, n_rounds, n_inner)
    med = {k: statistics.median(v) for k, v in samples.items()}
    ratios = {k: statistics.median([a / b for a, b in zip(v, samples[base])]) for k, v in samples.items()}
    return med, ratios


def bench_main(quick):
    T, N = 100, 1000
    ys, key = data(T), jax.random.key(0)
    fns = {
        "hand-written lax.scan": hand_filter(T, N),
        "smc.particle_filter": ppl_filter(T, N, True),
        "smc.particle_filter(history=False)": ppl_filter(T, N, False),
        "GFI filter, one key per particle": split_key_filter(T, N),
    }
    t, paired = paired_ratios({k: (lambda f=f: f(key, ys)) for k, f in fns.items()}, "hand-written lax.scan",
                              n_rounds=10 if quick else 40, n_inner=5 if quick else 10)
    reps = 1 if quick else 7
    firsts = {k: [] for k in fns}
    for _ in range(reps):  # interleaved repetitions; the median damps machine-load noise
        for k, f in fns.items():
            firsts[k].append(time_first_call(lambda f=f: (lambda: f(key, ys))))
    first = {k: statistics.median(v) for k, v in firsts.items()}
    base, base_first = t["hand-written lax.scan"], first["hand-written lax.scan"]
    base_min = min(firsts["hand-written lax.scan"])
    rows = [{"filter": k, "ms/run": 1e3 * v, "ratio of medians": v / base, "median paired ratio": paired[k],
             "first call s": first[k], "first-call ratio": first[k] / base_first,
             "first-call ratio of minima": min(firsts[k]) / base_min} for k, v in t.items()]
    write_results("bench_smc", rows, notes=(
        "Bootstrap particle filter, 1-D LG-SSM, T=100, N=1000, systematic resampling every step; median "
        "steady-state time per run (interleaved) and first call (trace+compile+run) vs hand-written JAX. "
        "`history=True` (default) also returns every step's particles, weights, ancestors and carries. "
        "'median paired ratio' is the median over rounds of the time ratio to hand-written JAX within the same "
        "round (robust to load drift on a shared machine). First calls: 7 interleaved rounds (each after "
        "jax.clear_caches()); 'first call s' and 'first-call ratio' are medians, 'first-call ratio of minima' "
        "compares the fastest of each (one ~1.2 s compile varies by 10-20% between calls)."))
    return rows


def bench_resampling(quick):
    rows = []
    sizes = [1_000, 10_000] if quick else [1_000, 10_000, 100_000]
    for n in sizes:
        lw = jax.random.normal(jax.random.key(1), (n,))
        fns = {s: jax.jit(lambda k, lw, s=s: resample_indices(k, lw, s)) for s in smc.SCHEMES}
        if n == 1_000:
            fns["jax.random.categorical(shape=(N,))"] = jax.jit(
                lambda k, lw: jax.random.categorical(k, lw, shape=(lw.shape[0],)))
        key = jax.random.key(0)
        t = time_interleaved({s: (lambda f=f: f(key, lw)) for s, f in fns.items()}, n_rounds=5 if quick else 15,
                             n_inner=5)
        for s, v in t.items():
            rows.append({"scheme": s, "N": n, "us/call": 1e6 * v, "ns per particle": 1e9 * v / n})
    write_results("bench_smc_resampling", rows, notes="Time per resampling call (jit, CPU).")
    return rows


def bench_scaling(quick):
    rows = []
    key = jax.random.key(0)
    ns = [100, 1_000, 10_000] if quick else [100, 1_000, 10_000, 100_000]
    for n in ns:
        f, ys = ppl_filter(100, n, False), data(100)
        t = time_interleaved({"pf": lambda: f(key, ys)}, n_rounds=3 if quick else 7, n_inner=2)["pf"]
        rows.append({"axis": "N", "T": 100, "N": n, "ms/run": 1e3 * t, "us per particle-step": 1e6 * t / (n * 100)})
    ts = [10, 100, 1000] if quick else [10, 100, 300, 1000]
    for T in ts:
        f, ys = ppl_filter(T, 1000, False), data(T)
        t = time_interleaved({"pf": lambda: f(key, ys)}, n_rounds=3 if quick else 7, n_inner=2)["pf"]
        rows.append({"axis": "T", "T": T, "N": 1000, "ms/run": 1e3 * t, "us per particle-step": 1e6 * t / (1000 * T)})
    write_results("bench_smc_scaling", rows, notes=(
        "smc.particle_filter(history=False), bootstrap, systematic resampling every step. Linear scaling "
        "means a flat last column (small sizes are dominated by per-step overhead)."))
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    t0 = time.time()
    bench_main(quick)
    bench_resampling(quick)
    bench_scaling(quick)
    print(f"total benchmark time {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
