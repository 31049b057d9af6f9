"""Inference algorithms written against the generative function interface.

Submodules: :mod:`inference.importance`, :mod:`inference.smc`, :mod:`inference.mcmc`,
:mod:`inference.vi`, :mod:`inference.diagnostics`, :mod:`inference.amortized` (neural proposals trained on
simulations from the model).
"""
