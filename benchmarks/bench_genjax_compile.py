"""First call of ppl vs GenJAX, each in its own environment (fresh processes).

GenJAX 0.10.3 needs jax 0.5 and numpyro 0.18, while ppl needs jax 0.10 and numpyro 0.22, so the
two cannot share a process any more (``benchmarks/bench_genjax.py`` used to time them side by
side in the GenJAX environment). This benchmark times each system in its own interpreter and
uses a hand-written JAX version of the same model, timed in *both* environments, as the yardstick
that removes the difference between the two jax/XLA versions.

Set up the GenJAX environment once, then run the driver from the main environment:

    bash benchmarks/setup_genjax_env.sh /tmp/gjvenv
    python -m benchmarks.bench_genjax_compile --rounds 5 --sites 10,100

(``--genjax-python`` or the environment variable ``GENJAX_PYTHON`` name another interpreter.)

The model is the one of ``bench_genjax.compile_rows``: ``n`` scalar sites ``x{i} ~ normal(0, 1)``,
summed. ``simulate`` samples all of them; ``generate`` observes the even sites at 0.1. Every
measurement is made by a worker,

    python -m benchmarks.bench_genjax_compile --worker SYSTEM --sites N --method METHOD

(SYSTEM: ``ppl``, ``genjax`` or ``hand``; METHOD: ``simulate`` or ``generate``), a fresh process
that imports only JAX/numpyro and the system it times, warms the backend up with one trivial
jitted call (backend start-up is the same for every system of one JAX version and is left out),
and prints one JSON line with:

- ``first_call_s``: trace + compile + run of ONE jitted call that returns the whole trace (ppl's
  top-level GFI call, which is jitted internally; GenJAX's ``simulate``/``generate`` and the
  hand-written function wrapped in ``jax.jit``), as a user's first call in a session;
- ``lower_s`` and ``compile_s``: after ``jax.clear_caches()`` and with a freshly built model,
  ``jax.jit(f).lower(key)`` (Python tracing + lowering to StableHLO) and ``.compile()`` (XLA),
  timed separately.

The driver runs, for each size and method, ``R`` rounds of fresh workers (``ppl`` and ``hand``
in this interpreter, ``genjax`` and ``hand`` in the GenJAX interpreter; the order is reversed
every other round), one at a time, and reports medians and the ratios ppl/GenJAX (direct) and
(ppl / hand on jax 0.10) / (GenJAX / hand on jax 0.5) (hand-normalized), in
``benchmarks/results/genjax_compile_xenv.{md,json}``. The persistent compilation cache is off
in the workers, and they run on the CPU unless ``JAX_PLATFORMS`` is set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SYSTEMS = ("ppl", "genjax", "hand")
METHODS = ("simulate", "generate")
DEFAULT_GENJAX_PYTHON = "/tmp/gjvenv/bin/python"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- worker side
def build(system: str, n: int, method: str):
    """The model of ``bench_genjax.compile_rows`` in ``system``: returns ``(call, jittable)``.

    ``call(key)`` is the user's first call (it compiles on its own); ``jittable(key)`` is the
    same computation as a plain function, to be lowered and compiled with ``jax.jit``. Both
    return the whole trace (every site's value, the score, and for ``generate`` the weight).
    Imports the system's package only when asked for it.

    Examples:
        >>> import jax
        >>> call, jittable = build("hand", 3, "generate")
        >>> values, retval, score, weight = call(jax.random.key(0))
        >>> len(values), float(values[0])
        (3, 0.10000000149011612)
    """
    import jax

    observed = {f"x{i}": 0.1 for i in range(0, n, 2)}
    if system == "ppl":
        import ppl

        model = _sum_of_sites(ppl, n)
        if method == "simulate":
            f = lambda k: model.simulate(k)
        else:
            cm = ppl.ChoiceMap(observed)
            f = lambda k: model.generate(k, cm)
        return f, f  # ppl stages a top-level call with jax.jit; inside the user's jit it traces inline
    if system == "genjax":
        import genjax

        model = _sum_of_sites(genjax, n)
        if method == "simulate":
            f = lambda k: model.simulate(k, ())
        else:
            cm = genjax.ChoiceMap.d(observed)
            f = lambda k: model.generate(k, cm, ())
        return (lambda k: jax.jit(f)(k)), f
    if system == "hand":
        f = _hand(n, method)
        return (lambda k: jax.jit(f)(k)), f
    raise ValueError(f"unknown system {system!r}: expected one of {SYSTEMS}")


def _sum_of_sites(lib, n: int):
    """The model in ``lib``'s own modeling language (``ppl`` or ``genjax``: both spell it the same):
    ``n`` scalar sites ``x{i} ~ normal(0, 1)``, summed."""

    @lib.gen
    def model():
        s = 0.0
        for i in range(n):
            s = s + lib.normal(0.0, 1.0) @ f"x{i}"
        return s

    return model


def _hand(n: int, method: str):
    """The model written directly in JAX + numpyro, one key per site (runs on jax 0.5 and 0.10)."""
    import jax
    import numpyro.distributions as nd

    def f(key):
        keys = jax.random.split(key, n)
        d = nd.Normal(0.0, 1.0)
        values, score, weight = [], 0.0, 0.0
        for i in range(n):
            if method == "generate" and i % 2 == 0:
                x = jax.numpy.asarray(0.1, jax.numpy.float32)
                lp = d.log_prob(x)
                weight = weight + lp
            else:
                x = d.sample(keys[i])
                lp = d.log_prob(x)
            values.append(x)
            score = score + lp
        retval = sum(values[1:], values[0])
        if method == "generate":
            return tuple(values), retval, score, weight
        return tuple(values), retval, score

    return f


def worker(system: str, n: int, method: str) -> dict:
    """Time one system's first call, then its lowering and XLA compilation, in this process.

    Meant to run in a fresh interpreter (``--worker``); returns the record it prints.

    Examples:
        >>> r = worker("hand", 2, "simulate")
        >>> r["system"], r["first_call_s"] > 0, r["compile_s"] > 0
        ('hand', True, True)
    """
    import jax

    try:  # never load programs compiled by an earlier process
        jax.config.update("jax_enable_compilation_cache", False)
    except Exception:  # noqa: BLE001 - option absent in this JAX version: nothing is cached anyway
        pass
    key = jax.random.key(0)
    t0 = time.perf_counter()
    jax.block_until_ready(jax.jit(lambda x: x + 1)(jax.numpy.zeros(())))  # backend start-up
    warmup_s = time.perf_counter() - t0

    call, _ = build(system, n, method)
    t0 = time.perf_counter()
    jax.block_until_ready(call(key))
    first_call_s = time.perf_counter() - t0

    jax.clear_caches()
    _, jittable = build(system, n, method)  # a fresh model: no per-model cache of the first call helps
    t0 = time.perf_counter()
    lowered = jax.jit(jittable).lower(key)
    lower_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(key))
    return {"system": system, "sites": n, "method": method, "jax": jax.__version__,
            "backend": jax.default_backend(), "first_call_s": first_call_s, "lower_s": lower_s,
            "compile_s": compile_s, "warmup_s": warmup_s}


# ----------------------------------------------------------------------------- driver side
def run_worker(python: str, system: str, n: int, method: str) -> dict:
    """Run :func:`worker` in a fresh ``python`` process (from the repository root), return its record.

    Examples:
        >>> import sys
        >>> run_worker(sys.executable, "hand", 2, "simulate")["system"]
        'hand'
    """
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    for var in ("JAX_COMPILATION_CACHE_DIR", "PPL_COMPILATION_CACHE"):
        env.pop(var, None)
    cmd = [python, "-m", "benchmarks.bench_genjax_compile", "--worker", system, "--sites", str(n), "--method", method]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"worker {system} (sites={n}, {method}) with {python} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "unavailable"


def compare(sizes, rounds: int, genjax_python: str, log=print) -> tuple[list[dict], dict]:
    """Medians over ``rounds`` rounds of fresh workers for every size and method.

    Returns ``(rows, info)``: one row per (size, method) with the medians and ratios, and the
    JAX versions seen in each environment.

    Examples:
        >>> rows, info = compare([10], 5, "/tmp/gjvenv/bin/python")  # doctest: +SKIP
        >>> rows[0]["ppl/genjax"]  # doctest: +SKIP
    """
    runs = [("ppl", sys.executable, "ppl"), ("hand", sys.executable, "hand_main"),
            ("genjax", genjax_python, "genjax"), ("hand", genjax_python, "hand_gj")]
    rows, versions = [], {}
    for n in sizes:
        for method in METHODS:
            recs = {label: [] for _, _, label in runs}
            for r in range(rounds):
                order = runs if r % 2 == 0 else runs[::-1]
                for system, python, label in order:
                    rec = run_worker(python, system, n, method)
                    recs[label].append(rec)
                    versions[label] = rec["jax"]
                    log(f"  {n:>4} sites {method:8s} round {r + 1}/{rounds} {label:9s} jax {rec['jax']:7s} "
                        f"first {rec['first_call_s']:.3f}s lower {rec['lower_s']:.3f}s compile {rec['compile_s']:.3f}s")
            med = {label: {k: statistics.median(x[k] for x in v) for k in ("first_call_s", "lower_s", "compile_s")}
                   for label, v in recs.items()}
            p, g, hm, hg = (med[k]["first_call_s"] for k in ("ppl", "genjax", "hand_main", "hand_gj"))
            rows.append({
                "workload": f"{n} sites, {method}",
                "ppl s": p, "genjax s": g, "ppl/genjax": p / g,
                f"hand (jax {versions['hand_main']}) s": hm, f"hand (jax {versions['hand_gj']}) s": hg,
                "hand-normalized ppl/genjax": (p / hm) / (g / hg),
                "ppl lower s": med["ppl"]["lower_s"], "ppl compile s": med["ppl"]["compile_s"],
                "genjax lower s": med["genjax"]["lower_s"], "genjax compile s": med["genjax"]["compile_s"],
                f"hand {versions['hand_main']} lower/compile s": f"{med['hand_main']['lower_s']:.3g} / {med['hand_main']['compile_s']:.3g}",
                f"hand {versions['hand_gj']} lower/compile s": f"{med['hand_gj']['lower_s']:.3g} / {med['hand_gj']['compile_s']:.3g}",
                "rounds": rounds,
            })
    return rows, versions


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=SYSTEMS, help="run one measurement in this process and print it as JSON")
    p.add_argument("--method", choices=METHODS, default="simulate", help="worker only")
    p.add_argument("--sites", default="10,100", help="worker: one size; driver: comma-separated sizes")
    p.add_argument("--rounds", type=int, default=5, help="fresh-process rounds per size and method")
    p.add_argument("--genjax-python", default=os.environ.get("GENJAX_PYTHON", DEFAULT_GENJAX_PYTHON),
                   help="interpreter of the GenJAX environment (default: $GENJAX_PYTHON or /tmp/gjvenv/bin/python)")
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, int(a.sites), a.method)))
        return 0
    if not (os.path.isfile(a.genjax_python) and os.access(a.genjax_python, os.X_OK)):
        print(f"GenJAX interpreter {a.genjax_python!r} not found. Create the GenJAX environment with\n"
              f"    bash benchmarks/setup_genjax_env.sh /tmp/gjvenv\n"
              f"or point --genjax-python / GENJAX_PYTHON at its python.", file=sys.stderr)
        return 2
    sizes = [int(s) for s in a.sites.split(",") if s.strip()]
    load_before = _loadavg()
    t0 = time.perf_counter()
    rows, versions = compare(sizes, a.rounds, a.genjax_python)
    minutes = (time.perf_counter() - t0) / 60
    load_after = _loadavg()
    from benchmarks.harness import write_results

    notes = (
        f"First call (trace + compile + run of one jitted call returning the whole trace), seconds, median of "
        f"{a.rounds} fresh processes per cell (backend start-up excluded by one trivial jitted call first). "
        f"ppl runs on jax {versions['ppl']} and GenJAX 0.10.3 on jax {versions['genjax']}: the two systems use "
        f"different jax/XLA versions, so both the direct ratio ppl/genjax and the hand-normalized ratio "
        f"(ppl / hand on jax {versions['hand_main']}) / (genjax / hand on jax {versions['hand_gj']}) are given; the "
        f"hand-written JAX model (one key per site, numpyro Normal) is timed in both environments and removes "
        f"the XLA-version difference. Lower/compile columns: after jax.clear_caches() with a fresh model, "
        f"jax.jit(f).lower(key) and .compile() timed separately (medians). Load average (1/5/15 min) before the "
        f"run: {load_before}; after: {load_after}; the run took {minutes:.1f} min on {os.cpu_count()} CPUs."
    )
    write_results("genjax_compile_xenv", rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
