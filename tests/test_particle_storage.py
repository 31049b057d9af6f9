"""Particle collections store the values all particles share (model arguments, observations) once.

Exact checks: per-particle log weights against closed-form likelihoods, log Z-hat of an SMC pass
(init / extend / resample / rejuvenate / change) against the exact conjugate evidence by a z-test
over replicates, and the same draws and weights as a plain ``jax.vmap`` of ``generate``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal, norm

import ppl
from inference import importance, mcmc, smc
from inference.diagnostics.checks import unbiasedness_ztest
from ppl import keys as pkeys

D = 1000


@ppl.gen
def regression(xs, s0):
    mu = ppl.normal(0.0, s0) @ "mu"
    return ppl.normal(mu * xs, 1.0) @ "ys"


XS = jnp.linspace(0.5, 1.5, D)
YS = 0.3 * XS + jnp.asarray(np.random.default_rng(0).normal(size=D), jnp.float32)
OBS = ppl.ChoiceMap({"ys": YS})


def nbytes(tree):
    return sum(int(np.prod(np.shape(x))) * jnp.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree))


def test_10k_particles_1k_observations_hold_no_per_particle_copy():
    n = 10_000
    ps = importance.sample(jax.random.key(0), regression, (XS, 1.0), OBS, n)
    assert nbytes(ps) < 2_000_000, nbytes(ps)  # a broadcast copy alone would be n * D * 4 = 40 MB
    assert ps.stored_traces.choices["ys"].shape == (D,)
    assert ps.stored_traces.args[0].shape == (D,)
    assert ps.stored_traces.choices["mu"].shape == (n,)
    # exact per-particle weights: the likelihood of the observations given each particle's mu
    mu = np.asarray(ps.stored_traces.choices["mu"], np.float64)[:50]
    lik = norm.logpdf(np.asarray(YS, np.float64)[None], mu[:, None] * np.asarray(XS, np.float64)[None], 1.0).sum(1)
    np.testing.assert_allclose(np.asarray(ps.log_weights[:50], np.float64), lik, rtol=2e-5, atol=1e-2)


def test_same_draws_and_weights_as_plain_vmap():
    n = 64
    ps = importance.sample(jax.random.key(3), regression, (XS, 1.0), OBS, n)

    @jax.jit
    def reference(key):
        ks = pkeys.lanes(key, n)
        return jax.vmap(lambda k: regression.generate(k, OBS, XS, 1.0), in_axes=(pkeys.LANE_AXES,))(ks)

    tr, w = reference(jax.random.key(3))
    # the same program up to XLA's fusion choices: sums of 1000 terms may differ in the last bit
    np.testing.assert_allclose(np.asarray(ps.log_weights), np.asarray(w), rtol=1e-6)
    assert np.array_equal(np.asarray(ps.traces.choices["mu"]), np.asarray(tr.choices["mu"]))
    again = importance.sample(jax.random.key(3), regression, (XS, 1.0), OBS, n)
    assert np.array_equal(np.asarray(again.log_weights), np.asarray(ps.log_weights))


def test_observed_addresses_and_arguments_broadcast_on_access():
    n = 32
    ps = importance.sample(jax.random.key(1), regression, (XS, 1.0), OBS, n)
    ys = ps.traces.choices["ys"]
    assert ys.shape == (n, D) and np.array_equal(np.asarray(ys), np.broadcast_to(np.asarray(YS), (n, D)))
    assert ps.traces.args[0].shape == (n, D)
    assert ps.choices["mu"].shape == (n,)
    assert all(np.shape(x)[0] == n for x in jax.tree_util.tree_leaves(ps.traces))
    draws = ps.sample(jax.random.key(2), 7)
    assert draws.choices["ys"].shape == (7, D) and draws.choices["mu"].shape == (7,)
    trs = importance.sir(jax.random.key(2), regression, (XS, 1.0), OBS, n, n_samples=5)
    assert trs.choices["ys"].shape == (5, D)
    # expectation maps over particles without broadcasting the shared data
    m = ps.expectation(lambda tr: tr.choices["ys"].mean() + 0.0 * tr.choices["mu"])
    assert abs(float(m) - float(YS.mean())) < 1e-4
    full = ps.materialize()
    assert full.particle_axes is None and full.stored_traces.choices["ys"].shape == (n, D)
    assert np.array_equal(np.asarray(full.log_marginal_likelihood()), np.asarray(ps.log_marginal_likelihood()))


def test_collection_is_a_pytree_under_jit_vmap_and_scan():
    n = 16
    ps = importance.sample(jax.random.key(4), regression, (XS, 1.0), OBS, n)
    same = jax.jit(lambda p: p)(ps)
    assert same.particle_axes == ps.particle_axes and same.stored_traces.choices["ys"].shape == (D,)
    lml = jax.vmap(lambda k: importance.sample(k, regression, (XS, 1.0), OBS, n).log_marginal_likelihood())(
        jax.random.split(jax.random.key(5), 3))
    assert lml.shape == (3,) and bool(jnp.all(jnp.isfinite(lml)))
    kernel = mcmc.mh(ppl.select("mu"))

    def body(p, k):
        k1, k2 = jax.random.split(k)
        p = smc.resample(k1, p)
        p, info = smc.rejuvenate(k2, p, kernel)
        return p, p.expectation(lambda tr: tr.choices["mu"])

    out, means = jax.lax.scan(body, ps, jax.random.split(jax.random.key(6), 3))
    assert out.particle_axes == ps.particle_axes and means.shape == (3,)
    assert out.stored_traces.choices["ys"].shape == (D,)


@ppl.gen
def batches(s0, k):
    mu = ppl.normal(0.0, s0) @ "mu"
    for i in range(k):
        ppl.normal(jnp.full(4, mu), 1.0) @ f"y{i}"


Y0 = jnp.array([0.9, 1.4, 0.2, 1.1])
Y1 = jnp.array([1.6, 0.7, 1.0, 0.5])


def evidence(s0, ys):
    m = len(ys)
    return float(multivariate_normal(np.zeros(m), np.eye(m) + s0**2).logpdf(np.asarray(ys, np.float64)))


def _mh_kernel(key, tr):
    k1, k2 = jax.random.split(key)
    new, w, _ = tr.gf.regenerate(k1, tr, ppl.select("mu"), *tr.args)
    acc = jnp.log(jax.random.uniform(k2)) < w
    return jax.tree_util.tree_map(lambda a, b: jnp.where(acc, a, b), new, tr), acc


def _pass(key):
    ks = jax.random.split(key, 6)
    ps = smc.init(ks[0], batches, (2.0, 1), ppl.ChoiceMap({"y0": Y0}), 400)
    ps = smc.extend(ks[1], ps, (2.0, 2), ppl.ChoiceMap({"y1": Y1}))
    ps = smc.resample(ks[2], ps)
    ps = smc.resample_if(ks[3], ps, 0.5)
    ps, acc = smc.rejuvenate(ks[4], ps, _mh_kernel)
    changed = smc.change(ks[5], ps, batches, (1.0, 2))
    return ps, changed, acc


def test_every_step_keeps_observations_shared_and_evidence_exact():
    ps, changed, acc = _pass(jax.random.key(7))
    for p in (ps, changed):
        assert p.stored_traces.choices["y0"].shape == (4,) and p.stored_traces.choices["y1"].shape == (4,)
        assert p.stored_traces.choices["mu"].shape == (400,)
        assert p.traces.choices["y1"].shape == (400, 4)
    assert acc.shape == (400,)
    # each step is compiled once: the replicates reuse the compiled steps
    lz = np.array([[float(p.log_marginal_likelihood()) for p in _pass(k)[:2]]
                   for k in jax.random.split(jax.random.key(8), 40)])
    ys = jnp.concatenate([Y0, Y1])
    assert unbiasedness_ztest(lz[:, 0], evidence(2.0, ys)).passed
    assert unbiasedness_ztest(lz[:, 1], evidence(1.0, ys)).passed


def test_rejuvenate_with_gradient_kernel_keeps_data_shared():
    ps = smc.init(jax.random.key(9), regression, (XS, 1.0), OBS, 8)
    ps2, info = smc.rejuvenate(jax.random.key(10), ps, mcmc.hmc("mu", 0.01, 3))
    assert info["accept_prob"].shape == (8,)
    assert ps2.stored_traces.choices["ys"].shape == (D,) and ps2.traces.choices["mu"].shape == (8,)


@ppl.gen
def step(x, _):
    x = ppl.normal(x, 1.0) @ "x"
    ppl.normal(x, 1.0) @ "y"
    return x, None


SSM_OBS = ppl.ChoiceMap({"y": jnp.ones(3)})
SSM = ppl.scan(step, length=3)

ENTRIES = {
    "importance.sample": lambda n: importance.sample(jax.random.key(0), regression, (XS, 1.0), OBS, n),
    "importance.log_marginal_likelihood": lambda n: importance.log_marginal_likelihood(
        jax.random.key(0), regression, (XS, 1.0), OBS, n),
    "smc.init": lambda n: smc.init(jax.random.key(0), regression, (XS, 1.0), OBS, n),
    "smc.particle_filter": lambda n: smc.particle_filter(jax.random.key(0), SSM, (0.0, None), SSM_OBS, n),
    "smc.csmc": lambda n: smc.csmc(jax.random.key(0), SSM, (0.0, None), SSM_OBS, n, ppl.ChoiceMap({"x": jnp.zeros(3)})),
    "smc.tempered": lambda n: smc.tempered(jax.random.key(0), regression, (XS, 1.0), OBS, n, n_temps=2),
}


OWN_CHECK = ("importance.sample", "importance.log_marginal_likelihood", "smc.init", "smc.particle_filter",
             "smc.tempered", "smc.csmc")


@pytest.mark.parametrize("entry", sorted(ENTRIES))
@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10", None])
def test_bad_particle_counts_raise_a_clear_error(entry, bad):
    with pytest.raises(ppl.ModelError, match="n_particles") as e:
        ENTRIES[entry](bad)
    assert "positive integer" in str(e.value)
    if entry in OWN_CHECK:
        assert isinstance(e.value, smc.ParticleCountError) and isinstance(e.value, ValueError)
        assert "n_particles=1000" in str(e.value)
        assert entry.split(".")[1].replace("log_marginal_likelihood", "sample") in str(e.value)


def test_sample_counts_validated_and_whole_floats_accepted():
    with pytest.raises(smc.ParticleCountError, match="n_samples"):
        importance.sir(jax.random.key(0), regression, (XS, 1.0), OBS, 10, n_samples=0)
    assert importance.sample(jax.random.key(0), regression, (XS, 1.0), OBS, 1e1).n_particles == 10
