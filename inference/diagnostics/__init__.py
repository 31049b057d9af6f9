"""Diagnostics: ESS, R-hat and ArviZ export (:mod:`inference.diagnostics.mcmc`), and correctness
checks (:mod:`inference.diagnostics.checks`: unbiasedness z-tests, moment tests, compile counter),
and calibration of whole algorithms (:mod:`inference.diagnostics.sbc`: simulation-based
calibration, rank histograms, Geweke's joint-distribution test). A guide: docs/diagnostics.md.

Submodules are imported on demand (``from inference.diagnostics import checks``) so that this
package imports nothing heavy.
"""
