"""NUTS effective samples per second: ``mcmc.nuts`` vs BlackJAX vs NumPyro, one process.

    python -m benchmarks.bench_nuts_blackjax            # 3 seeds
    python -m benchmarks.bench_nuts_blackjax 5          # 5 seeds

Needs BlackJAX (``pip install -e ".[bench]"``). Model: Bayesian logistic regression on
scikit-learn's breast-cancer data (569 x 30 standardized + intercept, ``lr_vector`` and
``data`` of :mod:`benchmarks.bench_mcmc`), one chain, 500 warm-up steps + 1000 draws, every
implementation started from the same point (uniform(-2, 2) in the 31 coordinates, per seed).

Implementations (each compiled by a first call with another seed, then seeds interleaved):

- ``ppl``: ``mcmc.run(key, mcmc.nuts(select("w", "b")), trace, 1000, burn_in=500)``;
- ``ppl kernel scan``: the same kernel's ``init``/``step`` driven by one jitted ``lax.scan``
  (no runner): separates the runner's per-draw cost from the kernel's, and counts the
  warm-up's gradients (``mcmc.run`` does not return burn-in infos);
- ``numpyro``: NumPyro's NUTS kernel (functional API) on NumPyro's own potential of the model,
  warm-up and draws in one ``jax.jit``;
- ``blackjax``: ``blackjax.window_adaptation(blackjax.nuts, logdensity)`` for 500 steps, then
  1000 ``blackjax.nuts`` steps in a ``lax.scan``, all in one ``jax.jit``.

Per seed: wall and CPU seconds (``time.process_time``, all threads of the process) of the
compiled call incl. warm-up (the minimum over ``repeats`` interleaved repeats of the same call:
the machine is shared), min bulk ESS (ArviZ) over the 31 coefficients, ESS per wall and
per CPU second, mean leapfrog steps per draw, adapted step size, gradient evaluations (warm-up
+ draws; leapfrog steps, not counting the few of step-size searches) and CPU microseconds per
gradient.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import ppl
from benchmarks.bench_mcmc import data, lr_vector
from benchmarks.harness import block, write_results
from inference import mcmc
from inference.diagnostics import mcmc as dg

N_WARM, N_DRAW = 500, 1000


def _z0(seed, d):
    return jax.random.uniform(jax.random.key(1000 + seed), (d,), minval=-2.0, maxval=2.0)


def make_blackjax(X, y):
    import blackjax

    def logdensity(theta):
        w, b = theta[:-1], theta[-1]
        logits = X @ w + b
        # the Bernoulli(logits) log likelihood in NumPyro's form (one softplus per datum: cheaper
        # than y * log_sigmoid(l) + (1 - y) * log_sigmoid(-l)); constants dropped
        return jnp.sum(y * logits - jax.nn.softplus(logits)) - 0.5 * jnp.sum(theta**2)

    @jax.jit
    def run(key, z0):
        k_warm, k_draw = jax.random.split(key)
        warmup = blackjax.window_adaptation(blackjax.nuts, logdensity)
        (state, params), winfo = warmup.run(k_warm, z0, num_steps=N_WARM)
        step = blackjax.nuts(logdensity, **params).step

        def body(st, k):
            st, info = step(k, st)
            return st, (st.position, info.num_integration_steps)

        _, (zs, steps) = jax.lax.scan(body, state, jax.random.split(k_draw, N_DRAW))
        return zs, steps, jnp.sum(winfo.info.num_integration_steps), params["step_size"]

    return run


def make_numpyro(X, y):
    import numpyro
    import numpyro.distributions as nd
    from numpyro.infer.hmc import hmc as np_hmc
    from numpyro.infer.util import initialize_model

    def np_model(X, y):
        w = numpyro.sample("w", nd.Normal(jnp.zeros(X.shape[1]), 1.0).to_event(1))
        b = numpyro.sample("b", nd.Normal(0.0, 1.0))
        numpyro.sample("y", nd.Bernoulli(logits=X @ w + b), obs=y)

    info = initialize_model(jax.random.key(0), np_model, model_args=(X, y))
    init_kernel, sample_kernel = np_hmc(info.potential_fn, algo="NUTS")

    @jax.jit
    def run(key, z0):
        st = init_kernel({"w": z0[:-1], "b": z0[-1]}, num_warmup=N_WARM, rng_key=key)

        def body(st, _):
            st = sample_kernel(st)
            return st, (st.z, st.num_steps)

        st, (_, wsteps) = jax.lax.scan(body, st, None, length=N_WARM)
        _, (zs, steps) = jax.lax.scan(body, st, None, length=N_DRAW)
        zs = jnp.concatenate([zs["w"], zs["b"][:, None]], -1)
        return zs, steps, jnp.sum(wsteps), st.adapt_state.step_size

    return run


def make_ppl(X, y, kernel=None):
    kernel = kernel or mcmc.nuts(ppl.select("w", "b"))

    def trace_at(z0):
        tr, _ = lr_vector.generate(jax.random.key(0), ppl.ChoiceMap({"y": y, "w": z0[:-1], "b": z0[-1]}), X)
        return tr

    def run(key, z0):
        res = mcmc.run(key, kernel, trace_at(z0), N_DRAW, burn_in=N_WARM)
        zs = jnp.concatenate([res.choices["w"][0], res.choices["b"][0][:, None]], -1)
        return zs, res.info["n_steps"][0], jnp.nan, res.info["step_size"][0, -1]

    @jax.jit
    def scan_run(key, tr):
        k_init, k_warm, k_draw = jax.random.split(key, 3)
        st = kernel.init(k_init, tr, N_WARM)

        def body(c, k):
            tr, st = c
            tr, st, info = kernel.step(k, tr, st, True)
            return (tr, st), (jnp.concatenate([tr.choices["w"], tr.choices["b"][None]]), info.n_steps,
                              info.step_size)

        c, (_, wsteps, _) = jax.lax.scan(body, (tr, st), jax.random.split(k_warm, N_WARM))
        _, (zs, steps, ss) = jax.lax.scan(body, c, jax.random.split(k_draw, N_DRAW))
        return zs, steps, jnp.sum(wsteps), ss[-1]

    return run, lambda key, z0: scan_run(key, trace_at(z0))


def _timed(fn, key, z0):
    t0, c0 = time.perf_counter(), time.process_time()
    out = block(fn(key, z0))
    return time.perf_counter() - t0, time.process_time() - c0, out


def bench(seeds=(0, 1, 2), repeats=3, impls=None):
    X, y = data()
    d = X.shape[1] + 1
    if impls is None:
        ours, ours_scan = make_ppl(X, y)
        impls = {"ppl": ours, "ppl kernel scan": ours_scan, "numpyro": make_numpyro(X, y),
                 "blackjax": make_blackjax(X, y)}
    for fn in impls.values():  # compile
        block(fn(jax.random.key(99), _z0(99, d)))
    rows = []
    tot = {k: [0.0, 0.0, 0.0] for k in impls}
    for seed in seeds:
        z0 = _z0(seed, d)
        times = {name: [] for name in impls}
        for _ in range(repeats):  # the same (deterministic) call repeated, implementations interleaved
            for name, fn in impls.items():
                wall, cpu, out = _timed(fn, jax.random.key(seed), z0)
                times[name].append((wall, cpu, out))
        for name in impls:
            # least-disturbed repeat: the minimum of wall and of CPU time (the outputs are identical)
            wall, cpu = min(t[0] for t in times[name]), min(t[1] for t in times[name])
            zs, steps, wgrads, step_size = times[name][0][2]
            draws = np.asarray(zs)
            ess = float(min(dg.ess(draws[None, :, j]) for j in range(d)))
            wgrads = float(wgrads)
            if name.startswith("ppl") and not name.endswith("scan"):  # mcmc.run: no burn-in infos
                wgrads = float("nan")
            n_grad = wgrads + float(np.sum(steps))
            tot[name][0] += ess
            tot[name][1] += wall
            tot[name][2] += cpu
            rows.append({"impl": name, "seed": seed, "wall_s": wall, "cpu_s": cpu, "min_ess_bulk": ess,
                         "ess_per_wall_s": ess / wall, "ess_per_cpu_s": ess / cpu,
                         "mean_leapfrog_steps": float(np.mean(steps)), "step_size": float(step_size),
                         "warmup_grads": wgrads, "total_grads": n_grad, "cpu_us_per_grad": 1e6 * cpu / n_grad})
            print(rows[-1], flush=True)
    for name, (ess, wall, cpu) in tot.items():
        rows.append({"impl": f"{name} (all seeds)", "seed": "-", "wall_s": wall, "cpu_s": cpu, "min_ess_bulk": ess,
                     "ess_per_wall_s": ess / wall, "ess_per_cpu_s": ess / cpu, "mean_leapfrog_steps": "-",
                     "step_size": "-", "warmup_grads": "-", "total_grads": "-", "cpu_us_per_grad": "-"})
    for name in [k for k in impls if k != "blackjax" and "blackjax" in impls]:
        b = tot["blackjax"]
        rows.append({"impl": f"ratio {name}/blackjax", "seed": "-", "wall_s": tot[name][1] / b[1],
                     "cpu_s": tot[name][2] / b[2], "min_ess_bulk": tot[name][0] / b[0],
                     "ess_per_wall_s": (tot[name][0] / tot[name][1]) / (b[0] / b[1]),
                     "ess_per_cpu_s": (tot[name][0] / tot[name][2]) / (b[0] / b[2]), "mean_leapfrog_steps": "-",
                     "step_size": "-", "warmup_grads": "-", "total_grads": "-", "cpu_us_per_grad": "-"})
    return rows


def main(argv):
    n = int(argv[1]) if len(argv) > 1 else 3
    notes = (
        "Bayesian logistic regression, breast cancer 569x30 standardized + intercept; one chain, 500 warm-up + "
        "1000 draws, all implementations from the same uniform(-2, 2) start per seed, seeds interleaved in one "
        "process; wall_s / cpu_s = min over 3 repeats of the compiled call incl. warm-up (cpu = process_time, all threads); ESS = "
        "min bulk ESS (ArviZ) over the 31 coefficients; grads = leapfrog steps of warm-up + draws (ppl's warm-up "
        "count is not returned by mcmc.run: see the kernel-scan row of the same seed)."
    )
    write_results("bench_nuts_blackjax", bench(tuple(range(n))), notes)


if __name__ == "__main__":
    main(sys.argv)
