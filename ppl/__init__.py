"""ppl: a probabilistic programming language with programmable inference, on JAX.

Models are Python functions decorated with :func:`gen`; inside them ``dist(...) @ "addr"``
and ``model(...) @ "addr"`` trace random choices. Every model, distribution and combinator
implements the generative function interface (``simulate``, ``assess``, ``generate``,
``update``, ``regenerate``).

Examples:
    >>> import jax, jax.numpy as jnp, ppl
    >>> @ppl.gen
    ... def regression(xs):
    ...     slope = ppl.normal(0.0, 1.0) @ "slope"
    ...     noise = ppl.gamma(2.0, 2.0) @ "noise"
    ...     return ppl.normal(slope * xs, noise) @ "ys"
    >>> xs = jnp.linspace(-1, 1, 5)
    >>> tr, w = regression.generate(jax.random.key(0), ppl.ChoiceMap({"ys": jnp.zeros(5)}), xs)
    >>> bool(jnp.isfinite(w))
    True
"""

from . import cache
from .cache import disable_compilation_cache, enable_compilation_cache
from .choicemap import ChoiceMap, Masked, Selection, select, select_all, select_none
from .combinators import cond, mix, repeat, scan, switch, vmap
from .core import GenerativeFunction, Trace, debug
from .distributions import (
    DistributionGF,
    bernoulli,
    beta,
    binomial,
    categorical,
    cauchy,
    dirichlet,
    dist,
    exponential,
    flip,
    gamma,
    geometric,
    half_cauchy,
    half_normal,
    inverse_gamma,
    laplace,
    lkj,
    lkj_cholesky,
    log_normal,
    multinomial,
    mv_normal,
    negative_binomial,
    negative_binomial2,
    normal,
    poisson,
    student_t,
    truncated_normal,
    uniform,
    von_mises,
    wishart,
    wishart_cholesky,
    zero_inflated_negative_binomial2,
    zero_inflated_poisson,
)
from .errors import (
    AddressError,
    ArgumentError,
    CarryShapeError,
    ModelError,
    NonFiniteError,
    NotGenerativeError,
    ParameterError,
    ShapeError,
    TracedControlFlowError,
)
from .sites import deterministic, deterministics, factor
from .tracing import GenFn, GenTrace, gen

__version__ = "0.1.0"

__all__ = [
    "cache", "enable_compilation_cache", "disable_compilation_cache",
    "ChoiceMap", "Masked", "Selection", "select", "select_all", "select_none",
    "cond", "mix", "repeat", "scan", "switch", "vmap",
    "GenerativeFunction", "Trace", "debug", "gen", "GenFn", "GenTrace", "DistributionGF", "dist",
    "normal", "half_normal", "log_normal", "gamma", "inverse_gamma", "beta", "exponential",
    "uniform", "student_t", "cauchy", "laplace", "dirichlet", "mv_normal", "bernoulli", "flip",
    "binomial", "poisson", "categorical", "geometric",
    "half_cauchy", "truncated_normal", "von_mises", "lkj", "lkj_cholesky", "wishart", "wishart_cholesky",
    "multinomial", "negative_binomial", "negative_binomial2", "zero_inflated_poisson",
    "zero_inflated_negative_binomial2", "factor", "deterministic", "deterministics",
    "ModelError", "AddressError", "ShapeError", "ParameterError", "TracedControlFlowError",
    "NotGenerativeError", "CarryShapeError", "NonFiniteError", "ArgumentError",
]
