"""The one SMC resampling step (``smc.resample_step``): definition, evidence bookkeeping
(unbiasedness z-test), dead particles, custom ancestor draws; and the seams of ``inference.smc``
(no private cross-module imports, the deprecated ``FitResult`` alias, module sizes)."""

import ast
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inference import smc
from inference.smc.resampling import SCHEMES, log_evidence, log_normalize, resample_indices, resample_step

LW = jnp.log(jnp.array([0.02, 0.3, 0.05, 0.13, 0.0, 0.25, 0.17, 0.08], jnp.float32))
N = LW.shape[0]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("thr", [0.3, 0.9])
def test_resample_step_is_the_ess_test_the_scheme_and_the_bookkeeping(scheme, thr):
    key, log_z = jax.random.key(3), jnp.float32(-1.25)
    # a traced threshold (as smc.resample_if passes it) and a Python one give the same step
    traced = jax.jit(lambda lw, t: resample_step(key, lw, log_z, ess_threshold=t, resampling=scheme))(LW, thr)
    out = jax.jit(lambda lw: resample_step(key, lw, log_z, ess_threshold=thr, resampling=scheme))(LW)
    for a, b in zip(out, traced):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    need = float(smc.ess(LW)) < thr * N
    assert bool(out.resampled) == need
    if need:
        np.testing.assert_array_equal(np.asarray(out.ancestors), np.asarray(resample_indices(key, LW, scheme)))
        assert np.all(np.asarray(out.log_weights) == 0.0)
        expected = -1.25 + jax.nn.logsumexp(LW) - np.log(N)
        np.testing.assert_allclose(float(out.log_z), float(expected), rtol=1e-6)
    else:
        np.testing.assert_array_equal(np.asarray(out.ancestors), np.arange(N))
        np.testing.assert_array_equal(np.asarray(out.log_weights), np.asarray(LW))
        assert float(out.log_z) == -1.25
    assert not bool(out.dead)


def test_when_and_the_static_always_threshold():
    key, lw = jax.random.key(0), jnp.zeros(4)
    off = resample_step(key, lw, 0.5, ess_threshold=1.0, when=jnp.array(False))
    np.testing.assert_array_equal(np.asarray(off.ancestors), np.arange(4))
    assert not bool(off.resampled) and float(off.log_z) == 0.5
    # a Python threshold >= 1 resamples whenever `when` holds, even at ESS = N
    on = resample_step(key, lw, 0.5, ess_threshold=1.0, when=jnp.array(True))
    assert bool(on.resampled) and float(on.log_z) == 0.5
    # a threshold below 1 does not resample equal weights
    assert not bool(resample_step(key, lw, ess_threshold=0.99).resampled)


def test_all_dead_particles():
    out = resample_step(jax.random.key(0), jnp.full(5, -jnp.inf), 0.0, ess_threshold=0.5)
    assert bool(out.resampled) and bool(out.dead)
    np.testing.assert_array_equal(np.asarray(out.ancestors), np.arange(5))
    assert float(out.log_z) == -np.inf
    assert not np.any(np.isnan(np.asarray(out.log_weights)))


def test_custom_ancestor_draw_is_used_only_on_resampling():
    def draw(key, lwn, dead):
        return jnp.full(lwn.shape, jnp.argmax(lwn), jnp.int32)

    out = resample_step(jax.random.key(0), LW, ess_threshold=0.9, draw_ancestors=draw)
    assert np.asarray(out.ancestors).tolist() == [1] * N
    out = resample_step(jax.random.key(0), LW, ess_threshold=0.01, draw_ancestors=draw)
    assert np.asarray(out.ancestors).tolist() == list(range(N))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_evidence_bookkeeping_is_unbiased(scheme):
    """Two-step toy SMC: weights w, resample, reweight by g(ancestor). Z-hat = mean(w) * mean(g[a])
    has expectation mean(w) * sum_i w_i g_i / sum w (z-test over replicates)."""
    g = jnp.array([0.5, 2.0, 1.0, 0.1, 3.0, 0.7, 1.5, 0.2])
    truth = float(jnp.mean(jnp.exp(LW)) * jnp.sum(jnp.exp(LW) * g) / jnp.sum(jnp.exp(LW)))

    def one(k):
        r = resample_step(k, LW, 0.0, resampling=scheme)  # every time (ess_threshold=1.0)
        lw = r.log_weights + jnp.log(g)[r.ancestors]
        return jnp.exp(log_evidence(r.log_z, log_normalize(lw)[1], N))

    reps = 4000
    z_hat = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(11), reps)), np.float64)
    se = z_hat.std(ddof=1) / np.sqrt(reps)
    assert abs(z_hat.mean() - truth) < 4 * se + 1e-7, (z_hat.mean(), truth, se)


SMC_DIR = pathlib.Path(smc.__file__).parent
SOURCES = sorted(SMC_DIR.glob("*.py")) + [SMC_DIR.parent / "importance.py"]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_private_cross_module_imports(path):
    """Modules of inference.smc (and importance.py) use each other's public names only."""
    tree = ast.parse(path.read_text())
    bad = [f"line {n.lineno}: from {n.module} import {a.name}" for n in ast.walk(tree)
           if isinstance(n, ast.ImportFrom) for a in n.names if a.name.startswith("_")]
    bad += [f"line {n.lineno}: .{n.attr}" for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and n.attr in ("_init_impl", "_T", "_filter", "_sweep", "_backward")]
    assert not bad, bad
    assert "jax._src" not in path.read_text()
    assert len(path.read_text().splitlines()) < 500


def test_fit_result_is_a_deprecated_alias():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        alias = smc.FitResult
    assert alias is smc.ParameterFitResult
    assert any(issubclass(x.category, DeprecationWarning) and "ParameterFitResult" in str(x.message) for x in w)
    assert "FitResult" not in smc.__all__ and "ParameterFitResult" in smc.__all__
