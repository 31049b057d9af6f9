"""Inference algorithms written against the generative function interface.

Submodules: :mod:`inference.importance`, :mod:`inference.smc`, :mod:`inference.mcmc`,
:mod:`inference.vi`, :mod:`inference.diagnostics`, :mod:`inference.amortized` (neural proposals trained on
simulations from the model), :mod:`inference.predictive` (``inference.Predictive`` and
``inference.log_likelihood``: predictive distributions and pointwise log-likelihoods),
:mod:`inference.enum` (``inference.marginalize`` and ``inference.infer_discrete``: discrete sites
summed out exactly, and their posterior).
"""

__all__ = ["Predictive", "log_likelihood", "marginalize", "infer_discrete"]


def __getattr__(name):  # imported on first use, so that `import inference` stays light
    if name in ("Predictive", "log_likelihood"):
        from . import predictive

        return getattr(predictive, name)
    if name in ("marginalize", "infer_discrete"):
        from . import enum

        return getattr(enum, name)
    raise AttributeError(f"module 'inference' has no attribute {name!r}")
