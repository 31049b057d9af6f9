"""The ``ppl`` command line: ``ppl demo`` runs a tour of the inference families.

Example:
    >>> from ppl.cli import build_parser
    >>> build_parser().parse_args(["demo", "--only", "modeling"]).only
    ['modeling']
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ppl", description="probabilistic programming on JAX")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run a tour of the inference families on built-in data")
    d.add_argument("--out", default="demo_output", help="folder for the PNG plots (default: demo_output)")
    d.add_argument("--only", nargs="*", default=None, help="run only these sections")
    d.add_argument("--seed", type=int, default=0)
    return p


def run_demo(out: str, only=None, seed: int = 0) -> int:
    import jax

    from inference.demo import SECTIONS

    os.makedirs(out, exist_ok=True)
    key = jax.random.key(seed)
    failures = 0
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
    return failures


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        return run_demo(args.out, args.only, args.seed)
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
