"""Scaling benchmarks: particle-filter cost against particles and time steps, and batched inference
(chains of ``mcmc.run``, particles of importance sampling) against the number of devices.

Run ``python -m benchmarks.bench_scaling`` (``--quick`` for fewer sizes). Measured:

1. ``smc.particle_filter`` (bootstrap, ``history=False``, systematic resampling every step) on a
   1-D linear-Gaussian state-space model: steady-state seconds per run (compiled, after a warm-up
   call) against ``N`` (particles, ``T=100``) and against ``T`` (time steps, ``N=1000``). A slope is
   fitted to ``log(time)`` against ``log(N)`` (and ``log(T)``), over all sizes and over the upper
   half (where fixed per-call and per-step overheads matter least); linear cost means slope ~1.
2. ``mcmc.run`` (HMC, 8 chains, 20,000 data points) and ``importance.sample`` (2**18 particles,
   200 data points) inside
   ``batch_sharding(device_mesh())`` with ``k`` host CPU devices, one subprocess per ``k`` (the
   device count is fixed when JAX starts: ``XLA_FLAGS=--xla_force_host_platform_device_count=k``).
   Forced host devices share the machine's cores, so the speedup is bounded by the number of
   cores (2 on the machine the committed results come from).

Results: ``benchmarks/results/bench_scaling.md|json`` (the filter),
``bench_scaling_devices.md|json`` (devices) and the plots ``scaling_pf.png`` and
``scaling_devices.png``. This is a benchmark, not a test: the test suite does not run it.
"""

from __future__ import annotations

import functools
import json
import statistics
import os
import subprocess
import sys
import time

import numpy as np

DEVICE_SCRIPT = r"""
import json, sys, time
import jax, jax.numpy as jnp, ppl
from inference import importance, mcmc
from inference.sharding import batch_sharding, device_mesh

@ppl.gen
def regression(xs):
    w = ppl.normal(jnp.zeros(3), 1.0) @ "w"
    mu = w[0] + w[1] * xs + w[2] * xs ** 2
    return ppl.normal(mu, 0.3) @ "ys"

def data(n):
    xs = jnp.linspace(-1.0, 1.0, n)
    return xs, ppl.ChoiceMap({"ys": 0.5 - xs + 0.7 * xs ** 2})

xs, obs = data(20000)      # MCMC: few chains, much data
xs_is, obs_is = data(200)  # importance sampling: many particles, little data
tr = regression.generate(jax.random.key(0), obs, xs)[0]
kernel = mcmc.hmc(ppl.select("w"), step_size=0.01, n_leapfrog=10)
n_chains, n_draws, n_particles = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

def timed(f, reps):
    jax.block_until_ready(f())  # compile and warm up
    best = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f())
        best.append(time.perf_counter() - t0)
    return min(best)

with batch_sharding(device_mesh()):
    t_mcmc = timed(lambda: mcmc.run(jax.random.key(1), kernel, tr, n_draws, n_chains=n_chains).choices["w"], 3)
    t_is = timed(lambda: importance.sample(jax.random.key(2), regression, (xs_is,), obs_is,
                                           n_particles=n_particles).log_weights, 5)
print("RESULT " + json.dumps({"devices": len(jax.devices()), "mcmc_s": t_mcmc, "is_s": t_is}))
"""


@functools.cache
def _step():
    import ppl

    @ppl.gen
    def step(x, _):
        x = ppl.normal(0.9 * x, 1.0) @ "x"
        ppl.normal(x, 0.5) @ "y"
        return x, None

    return step


def ppl_filter(T: int, N: int):
    """log Z-hat of the bootstrap filter (``history=False``) on ``T`` observations, ``N`` particles."""
    import ppl
    from inference import smc

    model = ppl.scan(_step(), length=T)
    return lambda key, ys: smc.particle_filter(key, model, (0.0, None), ppl.ChoiceMap({"y": ys}), N,
                                               history=False).log_z


def slope(xs, ts) -> float:
    """Least-squares slope of ``log(t)`` against ``log(x)``."""
    return float(np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ts, float)), 1)[0])


def bench_filter(quick: bool):
    import jax

    from benchmarks.harness import time_rounds

    def data(T):
        return jax.random.normal(jax.random.key(1), (T,))

    key = jax.random.key(0)
    ns = [100, 1_000, 10_000] if quick else [100, 300, 1_000, 3_000, 10_000]
    ts = [50, 200, 1_000] if quick else [50, 100, 200, 500, 1_000]
    rounds = 5 if quick else 11
    rows = []
    # all sizes of an axis timed round-robin in one loop (benchmarks.harness): drift in the load of a
    # shared machine then hits every size alike instead of distorting the slope
    for axis, sizes in (("N", ns), ("T", ts)):
        cases = {}
        for size in sizes:
            n, T = (size, 100) if axis == "N" else (1_000, size)
            f, ys = ppl_filter(T, n), data(T)
            cases[size] = (n, T, lambda f=f, ys=ys: f(key, ys))
        times = time_rounds({size: c[2] for size, c in cases.items()}, n_rounds=rounds, n_inner=2)
        for size, (n, T, _) in cases.items():
            t = statistics.median(times[size])
            rows.append({"axis": axis, "N": n, "T": T, "ms/run": 1e3 * t, "ns per particle-step": 1e9 * t / (n * T)})
    fits = {}
    for axis, sizes in (("N", ns), ("T", ts)):
        times = [r["ms/run"] for r in rows if r["axis"] == axis]
        upper = len(sizes) // 2
        fits[axis] = {"all": slope(sizes, times), "upper": slope(sizes[upper:], times[upper:])}
    return rows, fits


def bench_devices(quick: bool, counts=(1, 2, 4)):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    n_chains, n_draws, n_particles = (8, 50, 2 ** 16) if quick else (8, 200, 2 ** 18)
    rows = []
    for k in counts:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={k}", JAX_PLATFORMS="cpu",
                   PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        out = subprocess.run([sys.executable, "-c", DEVICE_SCRIPT, str(n_chains), str(n_draws), str(n_particles)],
                             env=env, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"device benchmark with {k} devices failed:\n{out.stderr[-3000:]}")
        res = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
        assert res["devices"] == k, res
        rows.append({"devices": k, "mcmc.run s": res["mcmc_s"], "importance s": res["is_s"]})
    for r in rows:
        r["mcmc speedup"] = rows[0]["mcmc.run s"] / r["mcmc.run s"]
        r["importance speedup"] = rows[0]["importance s"] / r["importance s"]
    return rows, dict(n_chains=n_chains, n_draws=n_draws, n_particles=n_particles)


def plot(pf_rows, fits, dev_rows, results_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, axis, fixed in ((axes[0], "N", "T=100"), (axes[1], "T", "N=1000")):
        rs = [r for r in pf_rows if r["axis"] == axis]
        x = np.array([r[axis] for r in rs], float)
        y = np.array([r["ms/run"] for r in rs])
        ax.loglog(x, y, "o-", label=f"measured (slope {fits[axis]['all']:.2f}; upper half {fits[axis]['upper']:.2f})")
        ax.loglog(x, y[-1] * x / x[-1], "k--", lw=0.8, label="linear (slope 1)")
        ax.set_xlabel(axis)
        ax.set_ylabel("ms per run")
        ax.set_title(f"particle filter, {fixed}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(results_dir, "scaling_pf.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    k = [r["devices"] for r in dev_rows]
    ax.plot(k, [r["mcmc speedup"] for r in dev_rows], "o-", label="mcmc.run (8 chains)")
    ax.plot(k, [r["importance speedup"] for r in dev_rows], "s-", label="importance.sample")
    ax.plot(k, k, "k--", lw=0.8, label="ideal")
    ax.axhline(os.cpu_count() or 1, color="grey", lw=0.8, ls=":", label=f"{os.cpu_count()} CPU cores")
    ax.set_xlabel("forced host devices")
    ax.set_ylabel("speedup vs 1 device")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(results_dir, "scaling_devices.png"), dpi=110)
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    from benchmarks import harness

    t0 = time.time()
    load_pf = os.getloadavg()[0]
    pf_rows, fits = bench_filter(quick)
    harness.write_results("bench_scaling", pf_rows, notes=(
        "Steady-state time (compiled, after a warm-up call; median of 11 rounds of 2 calls, every size of an "
        "axis timed round-robin in the same rounds so that load drift hits all sizes alike) of "
        "smc.particle_filter(history=False), bootstrap, systematic resampling every step, 1-D "
        "linear-Gaussian model. Fitted slope of log(time) vs log(size): "
        f"N (T=100): {fits['N']['all']:.3f} over all sizes, {fits['N']['upper']:.3f} over the upper half; "
        f"T (N=1000): {fits['T']['all']:.3f} over all sizes, {fits['T']['upper']:.3f} over the upper half "
        "(1.0 = linear; below 1 where fixed per-call and per-step overheads dominate). Plot: scaling_pf.png. "
        f"Load average: {load_pf:.1f} before, {os.getloadavg()[0]:.1f} after (on {os.cpu_count()} cores)."))
    load0 = os.getloadavg()[0]
    dev_rows, sizes = bench_devices(quick)
    load = (f" Load average while measuring: {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
            f"(on {os.cpu_count()} cores; above the core count, other jobs took CPU time and the speedups vary "
            "from run to run).")
    harness.write_results("bench_scaling_devices", dev_rows, notes=(
        f"mcmc.run (HMC, {sizes['n_chains']} chains, {sizes['n_draws']} draws, quadratic regression on 20000 "
        f"points) and importance.sample ({sizes['n_particles']} particles, 200 points) inside "
        "batch_sharding(device_mesh()), one process per device count "
        "(XLA_FLAGS=--xla_force_host_platform_device_count=k), steady-state seconds per call (fastest of "
        "3 and 5 calls after a warm-up call). "
        f"Forced host devices share this machine's {os.cpu_count()} CPU cores, so the speedup cannot "
        f"exceed {os.cpu_count()} (it saturates at the core count; more devices than cores only add "
        "overhead). Plot: scaling_devices.png." + load))
    plot(pf_rows, fits, dev_rows, harness.RESULTS)
    print(f"slopes: {json.dumps(fits)}")
    print(f"total benchmark time {time.time() - t0:.1f} s")
    return fits, dev_rows


if __name__ == "__main__":
    main()
