"""MCMC: kernels over traces, kernel combinators and a multi-chain runner.

Kernels are pure functions ``kernel(key, trace) -> (trace, info)`` built by :func:`mh`,
:func:`rw` (Gaussian random walk), :func:`mala`, :func:`hmc`, :func:`nuts` (NumPyro's NUTS),
:func:`gibbs` and :func:`involutive` (involutive MCMC: reversible jump, split/merge moves);
combine them with :func:`cycle`, :func:`mixture` and :func:`repeat`; run chains with :func:`run`.
``rw`` and the gradient kernels move constrained choices (positive, unit interval, simplex) in
unconstrained space. Each kernel's info is a typed ``NamedTuple`` (:mod:`inference.mcmc.infos`).

Examples:
    >>> import jax, jax.numpy as jnp, ppl
    >>> from inference import mcmc
    >>> @ppl.gen
    ... def model(xs):
    ...     slope = ppl.normal(0.0, 1.0) @ "slope"
    ...     noise = ppl.gamma(2.0, 2.0) @ "noise"
    ...     return ppl.normal(slope * xs, noise) @ "ys"
    >>> xs = jnp.linspace(-1, 1, 20)
    >>> ys = 0.7 * xs + 0.3 * jax.random.normal(jax.random.key(2), (20,))
    >>> tr, _ = model.generate(jax.random.key(0), ppl.ChoiceMap({"ys": ys}), xs)
    >>> kernel = mcmc.hmc(ppl.select("slope", "noise"), 0.1, 5, adapt_step_size=True)
    >>> res = mcmc.run(jax.random.key(1), kernel, tr, 300, burn_in=200)
    >>> bool(abs(res.choices["slope"].mean() - 0.7) < 0.2)
    True
"""

from . import infos
from .base import Kernel, accept
from .combinators import Cycle, Mixture, Repeat, cycle, mixture, repeat
from .gradient import HMC, MALA, hmc, mala
from .infos import GibbsInfo, HMCInfo, InvolutiveInfo, MHInfo, MixtureInfo, NUTSInfo, RWInfo
from .involutive import Involutive, involutive
from .kernels import MH, Gibbs, MHProposal, gibbs, mh
from .nuts import NUTS, nuts
from .runner import MCMCResult, init_chains, run, sample
from .rw import RW, rw, rw_proposal, rw_step
from .transforms import UnconstrainedView

__all__ = [
    "Kernel", "accept", "mh", "rw", "mala", "hmc", "nuts", "gibbs", "cycle", "mixture", "repeat", "run",
    "sample", "init_chains", "MCMCResult", "UnconstrainedView", "MH", "MHProposal", "RW", "MALA", "HMC",
    "NUTS", "Gibbs", "Cycle", "Mixture", "Repeat", "involutive", "Involutive", "MHInfo", "GibbsInfo",
    "HMCInfo", "RWInfo", "NUTSInfo", "InvolutiveInfo", "MixtureInfo", "rw_proposal", "rw_step",
]
