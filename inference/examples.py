"""The examples gallery: a registry of the runnable example scripts in ``docs/examples/``.

Each example is one script with ``main(small=False, out_dir=None)``: it runs a model and an
inference algorithm, prints its results, writes one PNG plot to ``out_dir`` (default: the current
folder) and checks itself against an exact or reference answer (``AssertionError`` when off).
``small=True`` runs a reduced size (used by ``tests/test_examples.py``). The command
``ppl examples`` lists them and ``ppl examples NAME [--small]`` runs one.

The scripts live in the source tree (``docs/examples``), so the registry finds them in a checkout
or an editable install; ``path(name)`` says where.

Example:
    >>> from inference import examples
    >>> "eight_schools" in examples.names()
    True
    >>> examples.path("eight_schools").name
    'eight_schools.py'
    >>> examples.describe("nosuch")
    Traceback (most recent call last):
    ...
    ppl.errors.ArgumentError: unknown example 'nosuch'; the examples are: ...
"""

from __future__ import annotations

import importlib.util
import pathlib

from ppl.errors import ArgumentError

EXAMPLES_DIR = pathlib.Path(__file__).resolve().parents[1] / "docs" / "examples"

# name -> (script file in docs/examples, one-line description); listed in the gallery's order
EXAMPLES: dict[str, tuple[str, str]] = {
    "eight_schools": ("eight_schools.py",
                      "non-centered eight schools with NUTS and a deterministic theta, vs Stan's "
                      "posteriordb reference; LOO with ArviZ"),
    "curve_fitting": ("curve_fitting.py",
                      "line fitting with outliers: ppl.cond inside ppl.vmap, Gibbs on the flags + HMC "
                      "on the line, vs the exact posterior (enumerated outlier configurations)"),
    "tempered_bimodal": ("tempered_bimodal.py",
                         "tempered SMC on a four-mode posterior: evidence Z-hat vs the exact "
                         "normalizing constant, mass of each mode"),
    "renyi_objective": ("renyi_objective.py",
                        "a user-written Renyi alpha objective with vi.expectation: value and gradient "
                        "vs exact quadrature on a conjugate model, then vi.fit to the posterior"),
    "stochastic_volatility": ("stochastic_volatility.py",
                              "stochastic volatility: particle-filter evidence and PMMH for phi vs an "
                              "exact grid (quadrature) filter"),
    "smc_steering": ("smc_steering.py",
                     "SMC steering of a bigram sequence model toward a hard constraint (token masking "
                     "+ factors) vs exact enumeration, against the number of particles"),
    "gaussian_mixture": ("gaussian_mixture.py",
                         "Gaussian mixture with the assignments summed out (inference.enum.marginalize), "
                         "NUTS on the means, infer_discrete; vs a grid posterior"),
    "vae_digits": ("vae_digits.py",
                   "a VAE on binarized sklearn digits trained with vi.iwelbo (map_mean, minibatch); "
                   "held-out ELBO <= IWAE_10 <= IWAE_100"),
}


def names() -> list[str]:
    """The example names, in the gallery's order.

    Example:
        >>> names()[0]
        'eight_schools'
    """
    return list(EXAMPLES)


def _entry(name: str) -> tuple[str, str]:
    if name not in EXAMPLES:
        raise ArgumentError(f"unknown example {name!r}; the examples are: {', '.join(EXAMPLES)} "
                            "(`ppl examples` lists them)")
    return EXAMPLES[name]


def describe(name: str) -> str:
    """The one-line description of example ``name`` (``ppl.ArgumentError`` if there is none).

    Example:
        >>> describe("eight_schools").startswith("non-centered")
        True
    """
    return _entry(name)[1]


def path(name: str) -> pathlib.Path:
    """The path of example ``name``'s script.

    Example:
        >>> path("eight_schools").exists()
        True
    """
    return EXAMPLES_DIR / _entry(name)[0]


def load(name: str):
    """Import example ``name``'s script as a module (its ``main`` is not run).

    Example:
        >>> callable(load("eight_schools").main)
        True
    """
    p = path(name)
    if not p.exists():
        raise ArgumentError(f"example {name!r}: its script {p} is missing (the examples live in the "
                            "source tree's docs/examples; use a checkout or an editable install)")
    spec = importlib.util.spec_from_file_location(f"ppl_example_{name}", p)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(name: str, small: bool = False, out_dir=None):
    """Run example ``name`` (its ``main(small, out_dir)``) and return what it returns.

    Example:
        >>> run("nosuch")
        Traceback (most recent call last):
        ...
        ppl.errors.ArgumentError: unknown example 'nosuch'; the examples are: ...
    """
    return load(name).main(small=small, out_dir=out_dir)
