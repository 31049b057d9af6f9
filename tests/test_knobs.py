"""One name and one default per SMC knob: ``resampling=`` / ``ess_threshold=`` everywhere, the old
``scheme=`` / ``ess_fraction=`` keywords as warning aliases, ``"systematic"`` as the one default, and
the resampling-scheme registry."""

import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from ppl.errors import ArgumentError, ModelError
from inference import importance, smc
from inference.smc.resampling import SCHEMES, resample_indices


@ppl.gen
def model():
    x = ppl.normal(0.0, 1.0) @ "x"
    ppl.normal(x, 0.5) @ "y"


OBS = ppl.ChoiceMap({"y": 1.2})


def _particles(n=32):
    return smc.init(jax.random.key(0), model, (), OBS, n)


def _same(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _call_new_and_old(new_call, old_call, old_name, new_name):
    new = new_call()
    with pytest.warns(DeprecationWarning, match=f"'{old_name}' is deprecated; use {new_name}="):
        old = old_call()
    _same(new, old)
    return new


def test_resample_scheme_alias_warns_and_matches():
    ps, k = _particles(), jax.random.key(1)
    _call_new_and_old(lambda: smc.resample(k, ps, resampling="residual"),
                      lambda: smc.resample(k, ps, scheme="residual"), "scheme", "resampling")


def test_resample_if_aliases_warn_and_match():
    ps, k = _particles(), jax.random.key(2)
    _call_new_and_old(lambda: smc.resample_if(k, ps, ess_threshold=1.0, resampling="stratified"),
                      lambda: smc.resample_if(k, ps, ess_fraction=1.0, resampling="stratified"),
                      "ess_fraction", "ess_threshold")
    with pytest.warns(DeprecationWarning) as rec:
        old = smc.resample_if(k, ps, ess_fraction=1.0, scheme="stratified")
    assert {str(w.message).split("'")[1] for w in rec} == {"ess_fraction", "scheme"}
    _same(old, smc.resample_if(k, ps, 1.0, "stratified"))


def test_collection_and_sir_aliases_warn_and_match():
    ps, k = _particles(), jax.random.key(3)
    _call_new_and_old(lambda: ps.sample(k, 5, resampling="multinomial"),
                      lambda: ps.sample(k, 5, scheme="multinomial"), "scheme", "resampling")
    _call_new_and_old(lambda: ps.resample(k, resampling="residual"),
                      lambda: ps.resample(k, scheme="residual"), "scheme", "resampling")
    _call_new_and_old(lambda: importance.sir(k, model, (), OBS, 64, n_samples=8, resampling="stratified"),
                      lambda: importance.sir(k, model, (), OBS, 64, n_samples=8, scheme="stratified"),
                      "scheme", "resampling")


def _mh(key, tr):
    k1, k2 = jax.random.split(key)
    new, w, _ = tr.gf.regenerate(k1, tr, ppl.select("mu"), *tr.args)
    acc = jnp.log(jax.random.uniform(k2)) < w
    return jax.tree_util.tree_map(lambda a, b: jnp.where(acc, a, b), new, tr), acc


@ppl.gen
def growing(n):
    mu = ppl.normal(0.0, 1.0) @ "mu"
    for i in range(n):
        ppl.normal(mu, 1.0) @ f"y{i}"


def test_resample_move_aliases_warn_and_match():
    args = [(1,), (2,)]
    obs = [ppl.ChoiceMap({f"y{i}": 0.7 * i}) for i in range(2)]
    k = jax.random.key(4)
    new = smc.resample_move(k, growing, args, obs, 64, _mh, ess_threshold=0.9, resampling="residual")
    with pytest.warns(DeprecationWarning) as rec:
        old = smc.resample_move(k, growing, args, obs, 64, _mh, ess_fraction=0.9, scheme="residual")
    assert {str(w.message).split("'")[1] for w in rec} == {"ess_fraction", "scheme"}
    _same(new, old)


@pytest.mark.parametrize("call", [
    lambda ps, k: smc.resample(k, ps, "systematic", scheme="residual"),           # new given by position
    lambda ps, k: smc.resample(k, ps, resampling="systematic", scheme="residual"),
    lambda ps, k: smc.resample_if(k, ps, 0.5, ess_fraction=0.5),
    lambda ps, k: ps.sample(k, 4, resampling="systematic", scheme="systematic"),
    lambda ps, k: importance.sir(k, model, (), OBS, 16, resampling="systematic", scheme="residual"),
])
def test_old_and_new_name_together_is_an_error(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # raises before any warning is emitted
        with pytest.raises(ArgumentError, match="pass only"):
            call(_particles(8), jax.random.key(5))


def test_one_default_everywhere():
    fns = [smc.resample, smc.resample_if, smc.particle_filter, smc.tempered, smc.pmmh, smc.fisher_gradient,
           smc.resample_move, importance.sir, smc.ParticleCollection.resample, smc.ParticleCollection.sample,
           resample_indices]
    for fn in fns:
        params = inspect.signature(fn).parameters
        assert "scheme" not in params and "ess_fraction" not in params, fn
        assert params["resampling"].default == "systematic", fn
    for fn in (smc.resample_if, smc.particle_filter, smc.tempered, smc.resample_move):
        assert "ess_threshold" in inspect.signature(fn).parameters, fn
    # the default really is systematic: same key, same draws as passing it explicitly
    ps, k = _particles(), jax.random.key(6)
    _same(ps.sample(k, 10), ps.sample(k, 10, resampling="systematic"))
    _same(importance.sir(k, model, (), OBS, 64, n_samples=10),
          importance.sir(k, model, (), OBS, 64, n_samples=10, resampling="systematic"))


def test_unknown_scheme_is_a_clear_error_everywhere():
    ps, k = _particles(8), jax.random.key(7)
    calls = [
        lambda: smc.resample(k, ps, "fancy"),
        lambda: smc.resample_if(k, ps, resampling="fancy"),
        lambda: ps.sample(k, 3, "fancy"),
        lambda: importance.sir(k, model, (), OBS, 8, resampling="fancy"),
        lambda: resample_indices(k, jnp.zeros(4), "fancy"),
        lambda: smc.particle_filter(k, None, (0.0, None), OBS, 8, resampling="fancy"),
    ]
    for call in calls:
        with pytest.raises(smc.UnknownResamplingError, match=r"unknown resampling scheme 'fancy'.*systematic") as e:
            call()
        assert isinstance(e.value, ModelError) and isinstance(e.value, ValueError)
        assert "register_resampling" in str(e.value)


def _every_other_heaviest(key, w, m):
    """Deterministic toy scheme: ancestors alternate between the two heaviest particles."""
    top2 = jnp.argsort(-w)[:2].astype(jnp.int32)
    return top2[jnp.arange(m) % 2]


def test_registered_toy_scheme_is_used_by_resample():
    smc.register_resampling("test-top2", _every_other_heaviest, overwrite=True)
    assert "test-top2" in smc.resampling_schemes() and smc.resampling_schemes()[:4] == SCHEMES
    ps = _particles(6)
    w = np.asarray(ps.normalized_weights())
    top = np.argsort(-w)[:2]
    out = smc.resample(jax.random.key(8), ps, resampling="test-top2")
    x_before, x_after = np.asarray(ps.traces.choices["x"]), np.asarray(out.traces.choices["x"])
    np.testing.assert_array_equal(x_after, x_before[np.array([top[0], top[1]] * 3)])
    assert np.allclose(np.asarray(out.log_weights), 0.0)
    np.testing.assert_allclose(out.log_marginal_likelihood(), ps.log_marginal_likelihood(), rtol=1e-6)
    # n_out != N goes through the same function
    idx = resample_indices(jax.random.key(9), jnp.log(jnp.array([0.1, 0.6, 0.3])), "test-top2", n_out=5)
    assert idx.tolist() == [1, 2, 1, 2, 1]


def test_registry_rejects_bad_registrations():
    with pytest.raises(smc.UnknownResamplingError, match="already registered|already been used"):
        smc.register_resampling("systematic", _every_other_heaviest)
    # a scheme that compiled programs have used can never be replaced (they are cached by name)
    smc.register_resampling("test-used", _every_other_heaviest, overwrite=True)
    resample_indices(jax.random.key(0), jnp.zeros(4), "test-used")
    with pytest.raises(smc.UnknownResamplingError, match="already been used"):
        smc.register_resampling("test-used", lambda key, w, m: jnp.zeros((m,), jnp.int32), overwrite=True)
    with pytest.raises(smc.UnknownResamplingError, match="must be a function"):
        smc.register_resampling("test-not-callable", 3)
    assert "test-not-callable" not in smc.resampling_schemes()
    smc.register_resampling("test-bad-shape", lambda key, w, m: jnp.zeros((m + 1,), jnp.int32), overwrite=True)
    with pytest.raises(smc.UnknownResamplingError, match="expected \\(4,\\)"):
        resample_indices(jax.random.key(0), jnp.zeros(4), "test-bad-shape")


def test_pmmh_acceptance_rate_is_a_method():
    res = smc.PMMHResult(None, jnp.array([True, False, False, True]), jnp.zeros(4))
    assert callable(res.acceptance_rate)
    assert float(res.acceptance_rate()) == 0.5
