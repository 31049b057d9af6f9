"""Persistent compilation cache: first call of a fresh process, without and with the cache.

    python -m benchmarks.bench_cache

Each measurement is a separate Python process (the only way to measure a *first* call): HMC on a
logistic regression (100 x 5 design, one vector site and one scalar site), 2 chains, 100 burn-in +
200 draws through ``mcmc.run``. Three processes: cache on with an empty folder (compiles and
writes), cache on again (loads), cache off. Reported: time of the first ``mcmc.run`` call, the whole
process (imports included), and the cache hits/misses the process counted (``ppl.cache.cache_stats``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

from benchmarks.harness import write_results

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import jax, jax.numpy as jnp
import ppl
if sys.argv[1] != "off":
    ppl.enable_compilation_cache(sys.argv[1])
from inference import mcmc

@ppl.gen
def logreg(x):
    w = ppl.normal(jnp.zeros(x.shape[1]), 1.0) @ "w"
    b = ppl.normal(0.0, 1.0) @ "b"
    ppl.bernoulli(logits=x @ w + b) @ "y"

x = jax.random.normal(jax.random.key(1), (100, 5))
y = (x[:, 0] > 0).astype(jnp.int32)
tr, _ = logreg.generate(jax.random.key(0), ppl.ChoiceMap({"y": y}), x)
t = time.perf_counter()
res = mcmc.run(jax.random.key(2), mcmc.hmc(ppl.select("w", "b"), step_size=0.1, n_leapfrog=10), tr, 200,
               n_chains=2, burn_in=100, progress=False)
jax.block_until_ready(res.choices["w"])
t1 = time.perf_counter()
print(json.dumps({"first_call_s": t1 - t, "process_s": t1 - t0, **ppl.cache.cache_stats()}))
"""


def _process(arg: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, arg], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    folder = tempfile.mkdtemp(prefix="ppl-cache-bench-")
    rows = []
    for label, arg in (("cache on, empty folder", folder), ("cache on, second process", folder),
                       ("cache off", "off")):
        r = _process(arg)
        rows.append({"process": label, "first mcmc.run (s)": r["first_call_s"], "whole process (s)": r["process_s"],
                     "hits": r["hits"], "misses": r["misses"]})
    speedup = rows[0]["first mcmc.run (s)"] / rows[1]["first mcmc.run (s)"]
    write_results("cache", rows, notes=f"first-call speed-up of the second process: {speedup:.1f}x")


if __name__ == "__main__":
    main()
