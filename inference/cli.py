"""The ``ppl`` command line: ``ppl demo`` runs a tour of the inference families; ``ppl --version``
prints the package version. Compiled programs are kept on disk between runs (see :mod:`ppl.cache`;
``--no-compilation-cache`` turns that off).

It lives in ``inference`` (not in the modeling language ``ppl``) because the demo runs inference
algorithms and the language package imports nothing from ``inference``.

``ppl demo --only NAME ...`` runs only the named sections; an unknown name is an error (exit
status 2) that lists the valid sections.

Example:
    >>> from inference.cli import build_parser, main
    >>> build_parser().parse_args(["demo", "--only", "modeling"]).only
    ['modeling']
    >>> main(["--no-compilation-cache", "demo", "--only", "nosuchsection"])  # message on stderr
    2
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time


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
    return p


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
    print(f"\nplots written to {os.path.abspath(out)}")
    return 0


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
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
