"""Correctness checks for inference algorithms: z-tests with tolerances from the sample spread.

- :func:`unbiasedness_ztest`: is the mean of ``exp(log_estimates - log_truth)`` (an estimate of
  ``Z-hat / Z``) equal to 1, within ``z`` standard errors of the sample mean?
- :func:`mean_ztest`: is the sample mean of draws within ``z`` standard errors of a value?
- :func:`batch_means_se`: Monte Carlo standard error of a correlated (MCMC) series.
- :class:`CompileCounter`: count XLA compilations in a block (assert "no recompilation").

Use :func:`unbiasedness_ztest` for estimators of a marginal likelihood ``Z`` (importance
sampling, SMC: unbiased for ``Z``, not ``log Z``) and :func:`mean_ztest` for any other unbiased
estimator, e.g. a gradient estimator against an exact gradient. docs/diagnostics.md has worked
examples; :mod:`inference.diagnostics.sbc` checks whole posterior samplers.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> log_z = np.log(rng.gamma(50.0, 1 / 50.0, size=2000))   # E[Z-hat] = 1
    >>> unbiasedness_ztest(log_z, 0.0).passed
    True
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

__all__ = ["ZTest", "unbiasedness_ztest", "mean_ztest", "batch_means_se", "CompileCounter"]


@dataclasses.dataclass
class ZTest:
    """Result of a z-test: the estimate, its standard error, the z score and whether it passed."""

    estimate: float
    target: float
    se: float
    z: float
    threshold: float

    @property
    def passed(self) -> bool:
        return bool(abs(self.z) <= self.threshold)

    def __repr__(self):
        return (f"ZTest(estimate={self.estimate:.5g}, target={self.target:.5g}, se={self.se:.3g}, "
                f"z={self.z:.2f}, passed={self.passed})")


def _z(est, target, se, threshold):
    se = float(se)
    z = (float(est) - float(target)) / se if se > 0 else (0.0 if est == target else np.inf)
    return ZTest(float(est), float(target), se, float(z), float(threshold))


def unbiasedness_ztest(log_estimates, log_truth, z: float = 4.0) -> ZTest:
    """z-test that ``E[exp(log_estimates) / exp(log_truth)] == 1`` from independent runs.

    The standard error is the sample standard deviation of the ratios over ``sqrt(n)``. Heavy right
    tails make this test conservative for small ``n`` (the sample mean is then usually below 1);
    use enough runs that the ratio's variance is well estimated.

    Example:
        >>> unbiasedness_ztest([0.1, -0.1, 0.05, -0.05], 0.0).passed
        True
    """
    r = np.exp(np.asarray(log_estimates, np.float64) - float(log_truth))
    return _z(r.mean(), 1.0, r.std(ddof=1) / np.sqrt(r.size), z)


def mean_ztest(samples, target, z: float = 4.0, se=None) -> ZTest:
    """z-test of the sample mean of independent ``samples`` against ``target``.

    Example:
        >>> mean_ztest(np.random.default_rng(1).normal(2.0, 1.0, 1000), 2.0).passed
        True
    """
    x = np.asarray(samples, np.float64)
    se = x.std(ddof=1) / np.sqrt(x.shape[0]) if se is None else se
    return _z(x.mean(), target, se, z)


def batch_means_se(series, n_batches: int = 20) -> float:
    """Monte Carlo standard error of the mean of a correlated series by non-overlapping batch means.

    Example:
        >>> round(batch_means_se(np.ones(100)), 6)
        0.0
    """
    x = np.asarray(series, np.float64)
    b = x.shape[0] // n_batches
    means = x[: b * n_batches].reshape(n_batches, b).mean(axis=1)
    return float(means.std(ddof=1) / np.sqrt(n_batches))


class CompileCounter:
    """Count backend (XLA) compilations while the ``with`` block runs.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> f = jax.jit(lambda x: x * 2)
        >>> _ = f(jnp.ones(3))
        >>> with CompileCounter() as cc:
        ...     _ = f(jnp.zeros(3))
        >>> cc.count
        0
    """

    _lock = threading.Lock()
    _active: list = []
    _registered = False

    def __init__(self):
        self.count = 0
        self.names: list = []

    @classmethod
    def _listener(cls, event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            for c in list(cls._active):
                c.count += 1
                c.names.append(kw.get("fun_name"))

    def __enter__(self):
        from jax import monitoring

        with CompileCounter._lock:
            if not CompileCounter._registered:
                monitoring.register_event_duration_secs_listener(CompileCounter._listener)
                CompileCounter._registered = True
            CompileCounter._active.append(self)
        return self

    def __exit__(self, *exc):
        with CompileCounter._lock:
            CompileCounter._active.remove(self)
        return False
