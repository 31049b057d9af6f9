"""The ``ppl`` command line: ``ppl demo`` runs a tour of the inference families; ``ppl bench``
runs the benchmark suite (``benchmarks/bench_*.py``; ``--quick`` for a small subset);
``ppl --version`` prints the package version. Compiled programs are kept on disk between runs (see :mod:`ppl.cache`;
``--no-compilation-cache`` turns that off).

It lives in ``inference`` (not in the modeling language ``ppl``) because the demo runs inference
algorithms and the language package imports nothing from ``inference``.

``ppl demo --only NAME ...`` runs only the named sections; an unknown name is an error (exit
status 2) that lists the valid sections. The demo announces each step before it compiles or runs
it, shows progress bars on the long loops, and lists every file it wrote at the end.

``ppl bench [--quick] [--only NAME ...] [--results DIR]`` runs the benchmarks registered in
:data:`BENCHMARKS` (each one a ``benchmarks.bench_*`` module's ``main``) and writes their reports
(``<DIR>/*.md`` and ``.json``; default ``benchmarks/results``, or ``benchmarks/results/quick`` with
``--quick`` so that a smoke run never overwrites the full results) and ``<DIR>/summary.md``: one
row per benchmark with its status, wall time and report files. It needs the source checkout
(the ``benchmarks`` folder is not installed with the package).

Example:
    >>> from inference.cli import build_parser, main
    >>> build_parser().parse_args(["demo", "--only", "modeling"]).only
    ['modeling']
    >>> sorted(name for name, b in BENCHMARKS.items() if b.quick is not None)
    ['core', 'scaling', 'smc', 'vi']
    >>> main(["--no-compilation-cache", "demo", "--only", "nosuchsection"])  # message on stderr
    2
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import os
import sys
import time


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One entry of :data:`BENCHMARKS`: the module whose ``main`` runs it, how ``main`` takes its
    arguments (``"argv"``: ``main(args)``; ``"prog_argv"``: ``main([prog, *args])``; ``"none"``:
    ``main()``), the arguments of a full and of a quick run (``None``: not part of ``--quick``),
    a module it needs that may be missing, and a one-line description."""

    module: str
    call: str
    full: tuple = ()
    quick: tuple | None = None
    requires: str | None = None
    about: str = ""


BENCHMARKS = {
    "core": Benchmark("benchmarks.bench_core", "argv", (), ("--quick", "--skip-first-call"),
                      about="GFI overhead vs hand-written JAX; first-call (trace + compile) time"),
    "smc": Benchmark("benchmarks.bench_smc", "argv", (), ("--quick",),
                     about="particle filter vs hand-written JAX; resampling schemes; scaling in N and T"),
    "mcmc": Benchmark("benchmarks.bench_mcmc", "prog_argv",
                      about="NUTS vs NumPyro and HMC vs hand-written JAX on logistic regression"),
    "vi": Benchmark("benchmarks.bench_vi", "prog_argv", (), ("logreg",),
                    about="ELBO gradients and VAE steps vs hand-written JAX and NumPyro SVI"),
    "amortized": Benchmark("benchmarks.bench_amortized", "none",
                           about="trained amortized proposal vs the prior in importance sampling"),
    "scaling": Benchmark("benchmarks.bench_scaling", "argv", (), ("--quick",),
                         about="particle-filter cost vs N and T (log-log slopes); chains/particles vs devices"),
    "cache": Benchmark("benchmarks.bench_cache", "none",
                       about="first call of a fresh process with and without the compilation cache"),
    "genjax": Benchmark("benchmarks.bench_genjax", "none", requires="genjax",
                        about="ppl vs GenJAX (own environment: benchmarks/setup_genjax_env.sh)"),
}
"""The benchmark registry of ``ppl bench``, in run order."""


def build_parser() -> argparse.ArgumentParser:
    from ppl import __version__

    p = argparse.ArgumentParser(prog="ppl", description="probabilistic programming on JAX")
    p.add_argument("--version", action="version", version=f"ppl {__version__}")
    p.add_argument("--no-compilation-cache", action="store_true",
                   help="do not keep compiled programs on disk (default: kept in ~/.cache/ppl/jax, "
                        "or $PPL_CACHE_DIR; PPL_COMPILATION_CACHE=0 also turns it off)")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run a tour of the inference families on built-in data")
    d.add_argument("--out", default="demo_output", help="folder for the PNG plots (default: demo_output)")
    d.add_argument("--only", nargs="*", default=None, help="run only these sections")
    d.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("bench", help="run the benchmark suite and write its reports",
                       description="Run the benchmarks (" + ", ".join(BENCHMARKS) + ") and write their "
                       "reports and a summary.md. Needs the source checkout (the benchmarks folder).")
    b.add_argument("--quick", action="store_true",
                   help="a small, fast subset (" + ", ".join(k for k, v in BENCHMARKS.items() if v.quick is not None)
                   + ") at reduced sizes; reports go to benchmarks/results/quick")
    b.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run only these benchmarks")
    b.add_argument("--results", default=None, metavar="DIR",
                   help="folder for the reports (default benchmarks/results, or benchmarks/results/quick)")
    e = sub.add_parser("examples", help="list the examples gallery or run one example",
                       description="Without NAME, list the examples (docs/examples); with NAME, run "
                       "it: it prints its results, writes a PNG plot and checks itself.")
    e.add_argument("name", nargs="?", default=None, metavar="NAME", help="the example to run")
    e.add_argument("--small", action="store_true", help="a reduced size (as in the test suite)")
    e.add_argument("--out", default=".", help="folder for the plot (default: the current folder)")
    return p


def run_examples(name=None, small: bool = False, out: str = ".") -> int:
    """``ppl examples``: list the examples gallery, or run example ``name`` (exit status 2 for an
    unknown name, 1 when the example's check against its reference fails)."""
    from inference import examples

    if name is None:
        width = max(map(len, examples.names()))
        for n in examples.names():
            print(f"{n:{width}s}  {examples.describe(n)}")
        print("\nrun one with: ppl examples NAME [--small] [--out DIR]")
        return 0
    if name not in examples.EXAMPLES:
        print(f"ppl examples: unknown example {name!r}; the examples are: {', '.join(examples.names())}",
              file=sys.stderr)
        return 2
    try:
        examples.run(name, small=small, out_dir=out)
    except AssertionError as err:
        print(f"ppl examples: {name} failed its check: {err}", file=sys.stderr)
        return 1
    return 0


def run_demo(out: str, only=None, seed: int = 0) -> int:
    import jax

    from inference.demo import SECTIONS

    if only is not None:
        unknown = [name for name in only if name not in SECTIONS]
        if unknown or not only:
            what = f"unknown section {unknown[0]!r}" if unknown else "--only needs at least one section"
            print(f"ppl demo: {what}; valid sections are: {', '.join(SECTIONS)}", file=sys.stderr)
            return 2
    os.makedirs(out, exist_ok=True)
    before = _mtimes(out)
    key = jax.random.key(seed)
    for i, name in enumerate(SECTIONS):
        if only and name not in only:
            continue
        try:
            module = importlib.import_module(f"inference.demo.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"inference.demo.{name}":
                continue
            raise
        print(f"\n=== {name} " + "=" * (60 - len(name)), flush=True)
        t0 = time.perf_counter()
        module.run(out, jax.random.fold_in(key, i))
        print(f"--- {name} done in {time.perf_counter() - t0:.1f} s", flush=True)
    written = [p for p, m in _mtimes(out).items() if before.get(p) != m]
    print(f"\n{len(written)} files written to {os.path.abspath(out)}:")
    for p in sorted(written):
        print(f"  {p}")
    return 0


def _mtimes(folder: str) -> dict:
    return {os.path.join(folder, f): os.stat(os.path.join(folder, f)).st_mtime_ns
            for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f))}


def _benchmarks_package():
    """Import the ``benchmarks`` package of the source checkout (next to ``inference``)."""
    try:
        return importlib.import_module("benchmarks.harness")
    except ModuleNotFoundError as e:
        if e.name not in ("benchmarks", "benchmarks.harness"):
            raise
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isfile(os.path.join(root, "benchmarks", "harness.py")):
        return None
    sys.path.insert(0, root)
    return importlib.import_module("benchmarks.harness")


def run_bench(quick: bool = False, only=None, results: str | None = None) -> int:
    """Run the registered benchmarks (see :data:`BENCHMARKS`) and write ``summary.md``.

    Returns the exit status: 0 when every selected benchmark ran (a benchmark whose required
    module is missing is skipped), 1 when one failed, 2 for an unknown name or a missing
    ``benchmarks`` folder.
    """
    import traceback

    names = list(only) if only else [k for k, v in BENCHMARKS.items() if not quick or v.quick is not None]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"ppl bench: unknown benchmark {unknown[0]!r}; valid benchmarks are: {', '.join(BENCHMARKS)}",
              file=sys.stderr)
        return 2
    harness = _benchmarks_package()
    if harness is None:
        print("ppl bench: the benchmarks folder was not found; run it from a source checkout of ppl",
              file=sys.stderr)
        return 2
    folder = results or (os.path.join(harness.RESULTS, "quick") if quick else harness.RESULTS)
    os.makedirs(folder, exist_ok=True)
    saved, harness.RESULTS = harness.RESULTS, folder  # write_results writes to harness.RESULTS
    rows, status = [], 0
    try:
        for name in names:
            bench = BENCHMARKS[name]
            args = list(bench.quick if quick and bench.quick is not None else bench.full)
            print(f"\n=== bench {name}: {bench.about} ({' '.join(args) or 'full size'}) ...", flush=True)
            if bench.requires and importlib.util.find_spec(bench.requires) is None:
                rows.append((name, f"skipped ({bench.requires} not installed)", 0.0, []))
                print(f"--- {name} skipped: needs {bench.requires}", flush=True)
                continue
            before = _mtimes(folder)
            t0 = time.perf_counter()
            saved_argv = sys.argv
            sys.argv = [bench.module, *args]
            try:
                main_fn = importlib.import_module(bench.module).main
                if bench.call == "argv":
                    main_fn(args)
                elif bench.call == "prog_argv":
                    main_fn([bench.module, *args])
                else:
                    main_fn()
                outcome = "ok"
            except Exception as e:  # report and go on with the next benchmark
                traceback.print_exc()
                outcome, status = f"failed ({type(e).__name__}: {e})".replace("|", "/"), 1
            finally:
                sys.argv = saved_argv
            dt = time.perf_counter() - t0
            reports = sorted(os.path.basename(p) for p, m in _mtimes(folder).items()
                             if p.endswith(".md") and before.get(p) != m and not p.endswith("summary.md"))
            rows.append((name, outcome, dt, reports))
            print(f"--- {name} {outcome} in {dt:.1f} s", flush=True)
    finally:
        harness.RESULTS = saved
    lines = [f"# Benchmark summary ({'quick' if quick else 'full'} run)", "",
             f"Environment: {harness.environment()}", "",
             "| benchmark | status | seconds | reports |", "|---|---|---|---|"]
    lines += [f"| {n} | {o} | {dt:.1f} | {', '.join(r) or '-'} |" for n, o, dt, r in rows]
    path = os.path.join(folder, "summary.md")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines[4:]))
    print(f"\nreports and summary written to {os.path.abspath(folder)} ({path})")
    return status


def _cache_wanted(args) -> bool:
    return not args.no_compilation_cache and os.environ.get("PPL_COMPILATION_CACHE", "1") != "0"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if _cache_wanted(args):
        from ppl.cache import enable_compilation_cache

        try:
            where = enable_compilation_cache()
            print(f"compiled programs are cached in {where} (--no-compilation-cache to turn off)")
        except OSError as e:  # a read-only home: run without the cache rather than fail
            print(f"ppl: compilation cache disabled ({e})", file=sys.stderr)
    if args.command == "demo":
        return run_demo(args.out, args.only, args.seed)
    if args.command == "examples":
        return run_examples(args.name, args.small, args.out)
    if args.command == "bench":
        return run_bench(args.quick, args.only, args.results)
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
