"""Resampling schemes: unbiased offspring counts (z-test), variance ordering, dead particles."""

import functools
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inference import smc
from inference.smc.resampling import SCHEMES, log_normalize, offspring_counts, resample_indices

W = np.array([0.02, 0.3, 0.05, 0.13, 0.0, 0.25, 0.17, 0.08])
N = W.size
R = 4000


@functools.lru_cache(maxsize=None)
def _counts(scheme, seed=0, w=None):
    w = W if w is None else w
    lw = jnp.log(jnp.asarray(w, jnp.float32))
    keys = jax.random.split(jax.random.key(seed), R)
    f = jax.jit(jax.vmap(lambda k, lw: offspring_counts(resample_indices(k, lw, scheme), w.size), (0, None)))
    return np.asarray(f(keys, lw), np.float64)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_offspring_counts_have_the_right_expectation(scheme):
    c = _counts(scheme)
    assert np.all(c.sum(1) == N)
    assert np.all(c[:, 4] == 0)  # zero weight: never selected
    mean, sd = c.mean(0), c.std(0, ddof=1)
    se = np.maximum(sd / np.sqrt(R), 1e-3)
    z = (mean - N * W) / se
    assert np.all(np.abs(z) < 4.5), z


@pytest.mark.parametrize("scheme", ["systematic", "stratified", "residual"])
def test_low_variance_schemes_beat_multinomial(scheme):
    v_mult = _counts("multinomial", seed=0).var(0).sum()
    v = _counts(scheme, seed=0).var(0).sum()
    assert v < 0.6 * v_mult, (v, v_mult)


def test_residual_keeps_the_deterministic_copies():
    c = _counts("residual", seed=0)
    floor = np.floor(N * W)
    assert np.all(c >= floor)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_dead_and_nan_weights(scheme):
    lw = jnp.array([-jnp.inf, jnp.nan, 0.0, -jnp.inf])
    a = resample_indices(jax.random.key(0), lw, scheme)
    assert np.all(np.asarray(a) == 2)
    dead = jnp.full(4, -jnp.inf)
    a = resample_indices(jax.random.key(0), dead, scheme)
    np.testing.assert_array_equal(np.asarray(a), np.arange(4))
    _, lse, d = log_normalize(dead)
    assert bool(d) and float(lse) == -np.inf
    assert float(smc.ess(dead)) == 0.0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_other_output_sizes_and_large_n(scheme):
    lw = jax.random.normal(jax.random.key(1), (100_000,))
    a = jax.jit(lambda k, lw: resample_indices(k, lw, scheme))(jax.random.key(2), lw)
    assert a.shape == (100_000,) and int(a.min()) >= 0 and int(a.max()) < 100_000
    b = resample_indices(jax.random.key(3), lw[:10], scheme, n_out=25)
    assert b.shape == (25,)


def test_ess():
    assert abs(float(smc.ess(jnp.zeros(7))) - 7.0) < 1e-4
    assert abs(float(smc.ess(jnp.array([0.0, -jnp.inf, -jnp.inf]))) - 1.0) < 1e-6


def test_unknown_scheme():
    with pytest.raises(ValueError, match="systematic"):
        resample_indices(jax.random.key(0), jnp.zeros(3), "bogus")
