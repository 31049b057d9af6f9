"""ppl vs GenJAX vs hand-written JAX, measured in one process.

GenJAX 0.10 needs jax 0.5, so this benchmark runs in its own environment, which
``benchmarks/setup_genjax_env.sh`` creates (GenJAX, jax 0.5.3, numpyro 0.18 and this project).
ppl runs unchanged on that JAX version, so all three candidates are timed side by side:

    bash benchmarks/setup_genjax_env.sh /tmp/gjvenv
    /tmp/gjvenv/bin/python -m benchmarks.bench_genjax

Workloads (each reported as time / hand-written JAX time):
1. regression model (1,000 data points): jitted simulate, assess, generate;
2. bootstrap particle filter on a 1-D linear-Gaussian SSM (T=100, N=1000, systematic resampling
   every step), with the model's step run through each system's GFI inside the same filter;
3. gradient of the joint log density of Bayesian logistic regression (breast-cancer data, 569 x
   30, standardized) with the weights as one vector site and as 31 scalar sites: steady state
   and first call (trace + compile);
4. first call of simulate and generate for models with 10, 100 and 1,000 scalar sites.
(ppl now needs jax 0.10, so first calls are compared across environments in ``bench_genjax_compile.py``.)
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpyro.distributions as nd

import genjax
import ppl
from benchmarks.bench_genjax_compile import _sum_of_sites
from benchmarks.harness import block, time_interleaved, write_results
from ppl.keys import LANE_AXES, lanes

# ----------------------------------------------------------------------------- 1. regression
N_DATA = 1000
xs = jnp.linspace(-3.0, 3.0, N_DATA)
ys = 0.7 * xs + jax.random.normal(jax.random.key(9), (N_DATA,))


@ppl.gen
def p_reg(xs):
    slope = ppl.normal(0.0, 1.0) @ "slope"
    noise = ppl.gamma(2.0, 2.0) @ "noise"
    return ppl.normal(slope * xs, noise) @ "ys"


@genjax.gen
def g_reg(xs):
    slope = genjax.normal(0.0, 1.0) @ "slope"
    noise = genjax.gamma(2.0, 2.0) @ "noise"
    return genjax.normal(slope * xs, noise) @ "ys"


def h_reg_simulate(key, xs):
    k1, k2, k3 = jax.random.split(key, 3)
    slope = nd.Normal(0.0, 1.0).sample(k1)
    noise = nd.Gamma(2.0, 2.0).sample(k2)
    y = nd.Normal(slope * xs, noise).sample(k3)
    score = nd.Normal(0.0, 1.0).log_prob(slope) + nd.Gamma(2.0, 2.0).log_prob(noise) + nd.Normal(slope * xs, noise).log_prob(y).sum()
    return (slope, noise, y), score


def h_reg_assess(slope, noise, y, xs):
    return nd.Normal(0.0, 1.0).log_prob(slope) + nd.Gamma(2.0, 2.0).log_prob(noise) + nd.Normal(slope * xs, noise).log_prob(y).sum()


def h_reg_generate(key, y, xs):
    k1, k2 = jax.random.split(key)
    slope = nd.Normal(0.0, 1.0).sample(k1)
    noise = nd.Gamma(2.0, 2.0).sample(k2)
    lik = nd.Normal(slope * xs, noise).log_prob(y).sum()
    score = nd.Normal(0.0, 1.0).log_prob(slope) + nd.Gamma(2.0, 2.0).log_prob(noise) + lik
    return (slope, noise, y), score, lik


def regression_rows():
    key = jax.random.key(0)
    p_obs = ppl.ChoiceMap({"ys": ys})
    p_all = ppl.ChoiceMap({"slope": 0.5, "noise": 1.0, "ys": ys})
    g_obs = genjax.ChoiceMap.d({"ys": ys})
    g_all = genjax.ChoiceMap.d({"slope": 0.5, "noise": 1.0, "ys": ys})
    cands = {
        "simulate": {
            "hand": jax.jit(h_reg_simulate),
            "ppl": jax.jit(lambda k, x: (lambda t: (t.choices, t.score))(p_reg.simulate(k, x))),
            "genjax": jax.jit(lambda k, x: (lambda t: (t.get_choices(), t.get_score()))(g_reg.simulate(k, (x,)))),
        },
        "assess": {
            "hand": jax.jit(lambda k, x: h_reg_assess(0.5, 1.0, ys, x)),
            "ppl": jax.jit(lambda k, x: p_reg.assess(p_all, x)[0]),
            "genjax": jax.jit(lambda k, x: g_reg.assess(g_all, (x,))[0]),
        },
        "generate": {
            "hand": jax.jit(lambda k, x: h_reg_generate(k, ys, x)),
            "ppl": jax.jit(lambda k, x: (lambda tw: (tw[0].choices, tw[0].score, tw[1]))(p_reg.generate(k, p_obs, x))),
            "genjax": jax.jit(lambda k, x: (lambda tw: (tw[0].get_choices(), tw[0].get_score(), tw[1]))(g_reg.generate(k, g_obs, (x,)))),
        },
    }
    rows = []
    for method, fns in cands.items():
        t = time_interleaved({k: (lambda f=f: f(key, xs)) for k, f in fns.items()}, n_rounds=40, n_inner=50)
        rows.append({"workload": f"regression {method}", "hand_us": t["hand"] * 1e6,
                     "ppl/hand": t["ppl"] / t["hand"], "genjax/hand": t["genjax"] / t["hand"]})
    return rows


# ----------------------------------------------------------------------------- 2. particle filter
T, N = 100, 1000
A, Q, R = 0.9, 1.0, 0.5
obs = jax.random.normal(jax.random.key(1), (T,))


@ppl.gen
def p_step(x, _):
    x = ppl.normal(A * x, Q) @ "x"
    ppl.normal(x, R) @ "y"
    return x, None


@genjax.gen
def g_step(x):
    x = genjax.normal(A * x, Q) @ "x"
    genjax.normal(x, R) @ "y"
    return x


def _systematic(key, logw):
    cdf = jnp.cumsum(jax.nn.softmax(logw))
    u = (jax.random.uniform(key) + jnp.arange(N)) / N
    return jnp.clip(jnp.searchsorted(cdf, u), 0, N - 1)


def _filter(propagate):
    @jax.jit
    def run(key, ys):
        def body(carry, kt):
            x, logz = carry
            k, y = kt
            k1, k2 = jax.random.split(k)
            x, lw = propagate(k1, x, y)
            logz = logz + jax.nn.logsumexp(lw) - jnp.log(N)
            return (x[_systematic(k2, lw)], logz), None

        return jax.lax.scan(body, (jnp.zeros(N), jnp.zeros(())), (jax.random.split(key, T), ys))[0][1]

    return run


def h_prop(k, x, y):
    x = A * x + Q * jax.random.normal(k, (N,))
    return x, nd.Normal(x, R).log_prob(y)


def p_prop(k, x, y):
    cm = ppl.ChoiceMap({"y": y})
    tr, w = jax.vmap(lambda kk, xx: p_step.generate(kk, cm, xx, None), in_axes=(LANE_AXES, 0))(lanes(k, N), x)
    return tr.retval[0], w


def g_prop(k, x, y):
    cm = genjax.ChoiceMap.d({"y": y})
    tr, w = jax.vmap(lambda kk, xx: g_step.generate(kk, cm, (xx,)))(jax.random.split(k, N), x)
    return tr.get_retval(), w


def filter_rows():
    fns = {"hand": _filter(h_prop), "ppl": _filter(p_prop), "genjax": _filter(g_prop)}
    t = time_interleaved({k: (lambda f=f: f(jax.random.key(0), obs)) for k, f in fns.items()}, n_rounds=20, n_inner=5)
    return [{"workload": "bootstrap PF T=100 N=1000", "hand_us": t["hand"] * 1e6,
             "ppl/hand": t["ppl"] / t["hand"], "genjax/hand": t["genjax"] / t["hand"]}]


# ----------------------------------------------------------------------------- 3. logistic regression gradient
def _cancer():
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    return jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.int32)


def logistic_rows():
    X, y = _cancer()
    D = X.shape[1]

    @ppl.gen
    def p_vec(X):
        b = ppl.normal(0.0, 1.0) @ "b"
        w = ppl.normal(jnp.zeros(D), 1.0) @ "w"
        return ppl.bernoulli(logits=X @ w + b) @ "y"

    @ppl.gen
    def p_scalar(X):
        b = ppl.normal(0.0, 1.0) @ "b"
        w = jnp.stack([ppl.normal(0.0, 1.0) @ f"w{i}" for i in range(D)])
        return ppl.bernoulli(logits=X @ w + b) @ "y"

    @genjax.gen
    def g_vec(X):
        b = genjax.normal(0.0, 1.0) @ "b"
        w = genjax.normal(jnp.zeros(D), jnp.ones(D)) @ "w"
        return genjax.flip(jax.nn.sigmoid(X @ w + b)) @ "y"

    @genjax.gen
    def g_scalar(X):
        b = genjax.normal(0.0, 1.0) @ "b"
        w = jnp.stack([genjax.normal(0.0, 1.0) @ f"w{i}" for i in range(D)])
        return genjax.flip(jax.nn.sigmoid(X @ w + b)) @ "y"

    def hand(theta, X):
        b, w = theta[0], theta[1:]
        lp = nd.Normal(0.0, 1.0).log_prob(theta).sum()
        return lp + nd.Bernoulli(logits=X @ w + b).log_prob(y).sum()

    theta = jnp.zeros(D + 1)
    p_vec_chm = lambda th: ppl.ChoiceMap({"b": th[0], "w": th[1:], "y": y})
    p_sc_chm = lambda th: ppl.ChoiceMap({"b": th[0], "y": y, **{f"w{i}": th[1 + i] for i in range(D)}})
    g_vec_chm = lambda th: genjax.ChoiceMap.d({"b": th[0], "w": th[1:], "y": y.astype(bool)})
    g_sc_chm = lambda th: genjax.ChoiceMap.d({"b": th[0], "y": y.astype(bool), **{f"w{i}": th[1 + i] for i in range(D)}})
    makers = {
        "hand": lambda: jax.jit(jax.grad(hand)),
        "ppl vector": lambda: jax.jit(jax.grad(lambda th, X: p_vec.assess(p_vec_chm(th), X)[0])),
        "ppl 31 scalars": lambda: jax.jit(jax.grad(lambda th, X: p_scalar.assess(p_sc_chm(th), X)[0])),
        "genjax vector": lambda: jax.jit(jax.grad(lambda th, X: g_vec.assess(g_vec_chm(th), (X,))[0])),
        "genjax 31 scalars": lambda: jax.jit(jax.grad(lambda th, X: g_scalar.assess(g_sc_chm(th), (X,))[0])),
    }
    first = {}
    for name, make in makers.items():
        jax.clear_caches()
        f = make()
        t0 = time.perf_counter()
        block(f(theta, X))
        first[name] = time.perf_counter() - t0
    fns = {name: make() for name, make in makers.items()}
    t = time_interleaved({k: (lambda f=f: f(theta, X)) for k, f in fns.items()}, n_rounds=30, n_inner=50)
    rows = []
    for name in ["ppl vector", "ppl 31 scalars", "genjax vector", "genjax 31 scalars"]:
        rows.append({"workload": f"logreg grad, {name}", "hand_us": t["hand"] * 1e6,
                     "ratio/hand": t[name] / t["hand"], "first_call_s": first[name],
                     "first/hand_first": first[name] / first["hand"]})
    return rows


# ----------------------------------------------------------------------------- 4. many sites
def compile_rows():
    import os

    rows = []
    sizes = (10, 100, 1000) if os.environ.get("PPL_BENCH_1000") == "1" else (10, 100)
    for n in sizes:
        p_many, g_many = _sum_of_sites(ppl, n), _sum_of_sites(genjax, n)
        p_cm = ppl.ChoiceMap({f"x{i}": 0.1 for i in range(0, n, 2)})
        g_cm = genjax.ChoiceMap.d({f"x{i}": 0.1 for i in range(0, n, 2)})
        row = {"workload": f"first call, {n} sites"}
        for name, f in [
            # both return the whole trace from one jitted call (returning only the weight would let
            # XLA drop all sampling code; GenJAX's own simulate is not jitted, so it is wrapped)
            ("ppl simulate", lambda: p_many.simulate(jax.random.key(0))),
            ("genjax simulate", lambda: jax.jit(lambda k: g_many.simulate(k, ()))(jax.random.key(0))),
            ("ppl generate", lambda: p_many.generate(jax.random.key(0), p_cm)),
            ("genjax generate", lambda: jax.jit(lambda k: g_many.generate(k, g_cm, ()))(jax.random.key(0))),
        ]:
            jax.clear_caches()
            t0 = time.perf_counter()
            block(f())
            row[name + " s"] = time.perf_counter() - t0
        rows.append(row)
    return rows


def main():
    import sys

    if "--compile-only" in sys.argv:
        write_results("genjax_compile", compile_rows(), "First call (trace + compile + run), seconds; each call "
                      "returns the whole trace from one jitted program.")
        return
    rows = regression_rows() + filter_rows()
    write_results("genjax_core_and_pf", rows, "Steady-state time relative to hand-written JAX, same process "
                  f"(jax {jax.__version__}, GenJAX 0.10.3).")
    write_results("genjax_logreg_grad", logistic_rows(), "Gradient of the joint log density; first call = trace + compile + run.")
    write_results("genjax_compile", compile_rows(), "First call (trace + compile + run), seconds; each call returns the whole "
                  "trace from one jitted program (ppl's top-level GFI calls are jitted internally; GenJAX's are wrapped).")


if __name__ == "__main__":
    main()
