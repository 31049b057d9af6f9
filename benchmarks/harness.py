"""Shared timing helpers for the benchmarks (interleaved steady-state timing, first-call timing).

Run a benchmark as ``python -m benchmarks.bench_core``; results are printed as a table and
written to ``benchmarks/results/<name>.md`` and ``.json``.

Example:
    >>> import jax.numpy as jnp
    >>> t = time_interleaved({"a": lambda: jnp.ones(3) + 1, "b": lambda: jnp.ones(3) * 2}, n_rounds=3, n_inner=2)
    >>> sorted(t)
    ['a', 'b']
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Callable

import jax

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def block(x):
    return jax.block_until_ready(x)


def time_rounds(fns: dict[str, Callable[[], object]], n_rounds: int = 30, n_inner: int = 10) -> dict:
    """Seconds per call of each thunk in every round (a list per thunk), measured round-robin
    after one warm-up call each. Interleaving the candidates in one process cancels drift in
    machine load between them."""
    for f in fns.values():  # warm up / compile
        block(f())
    samples = {k: [] for k in fns}
    for _ in range(n_rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(n_inner):
                out = f()
            block(out)
            samples[k].append((time.perf_counter() - t0) / n_inner)
    return samples


def time_interleaved(fns: dict[str, Callable[[], object]], n_rounds: int = 30, n_inner: int = 10) -> dict:
    """Median seconds per call of each (already compiled) thunk over :func:`time_rounds`."""
    return {k: statistics.median(v) for k, v in time_rounds(fns, n_rounds, n_inner).items()}


def time_first_call(make: Callable[[], Callable[[], object]]) -> float:
    """Seconds for the first call (trace + compile + run) of a freshly built function."""
    jax.clear_caches()
    f = make()
    t0 = time.perf_counter()
    block(f())
    return time.perf_counter() - t0


def time_first_call_phases(make: Callable[[], Callable[[], object]]) -> tuple[float, float]:
    """``(first call s, XLA compile s)``: :func:`time_first_call` and the part of it spent in XLA
    compiles (JAX's backend-compile events of every program compiled during the call). The rest
    is Python (tracing to a jaxpr, lowering to StableHLO, dispatch) plus the run itself."""
    compile_s = []

    def listen(name, duration, **_):
        if name == "/jax/core/compile/backend_compile_duration":
            compile_s.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        total = time_first_call(make)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return total, float(sum(compile_s))


def environment() -> dict:
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def write_results(name: str, rows: list[dict], notes: str = "") -> str:
    """Print ``rows`` as a markdown table and save them under ``benchmarks/results/``."""
    os.makedirs(RESULTS, exist_ok=True)
    cols = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    env = environment()
    text = f"# {name}\n\n{notes}\n\n" + "\n".join(lines) + f"\n\nEnvironment: {env}\n"
    print(text)
    with open(os.path.join(RESULTS, f"{name}.md"), "w") as fh:
        fh.write(text)
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as fh:
        json.dump({"rows": rows, "env": env, "notes": notes}, fh, indent=1, default=str)
    return text


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
