"""mcmc.rw (Gaussian random-walk Metropolis in unconstrained space) against exact conjugate
posteriors, typed kernel infos, mcmc.run's checkpoint/resume and NUTS's bounded pair cache."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from inference import mcmc
from inference.checkpoint import CheckpointMismatchError

YS = jnp.array([0.3, 1.2, 0.8, 2.1, 1.5])
COUNTS = jnp.array([3, 5, 2, 4, 6, 3], dtype=jnp.int32)
A, B = 2.0, 1.0  # Gamma(shape A, rate B) prior on a Poisson rate


@ppl.gen
def normal_normal(ys):
    mu = ppl.normal(0.0, 1.0) @ "mu"
    ppl.normal(jnp.full(ys.shape, mu), 1.0) @ "ys"


@ppl.gen
def gamma_poisson(ys):
    lam = ppl.gamma(A, B) @ "lam"
    ppl.poisson(jnp.full(ys.shape, lam)) @ "ys"


def batch_means_z(x, truth, n_batches=20):
    """z-score of the mean of draws ``x`` (chains, draws) against ``truth``, with the standard
    error from batch means (each chain cut into ``n_batches`` contiguous batches)."""
    x = np.asarray(x, dtype=float)
    c, n = x.shape
    m = n // n_batches
    means = x[:, : m * n_batches].reshape(c, n_batches, m).mean(axis=2).ravel()
    se = means.std(ddof=1) / np.sqrt(means.size)
    return (x[:, : m * n_batches].mean() - truth) / se


def check_posterior(x, mean, var):
    z_m = batch_means_z(x, mean)
    z_v = batch_means_z((np.asarray(x, dtype=float) - mean) ** 2, var)
    assert abs(z_m) < 4, f"mean {np.mean(x):.4f} vs exact {mean:.4f} (z={z_m:.2f})"
    assert abs(z_v) < 4, f"variance {np.mean((np.asarray(x) - mean) ** 2):.4f} vs exact {var:.4f} (z={z_v:.2f})"


def test_rw_normal_normal_posterior_with_adapted_step():
    tr = normal_normal.generate(jax.random.key(0), ppl.ChoiceMap({"ys": YS}), YS)[0]
    kernel = mcmc.rw(~ppl.select("ys"), step_size=5.0)  # far too large: adaptation must shrink it
    res = mcmc.run(jax.random.key(1), kernel, tr, 2000, n_chains=4, burn_in=500)
    prec = 1.0 + len(YS)
    check_posterior(res.choices["mu"], float(np.sum(YS)) / prec, 1.0 / prec)
    steps = np.asarray(res.info.step_size)
    assert np.all(steps == steps[:, :1]) and np.all(steps[:, 0] < 5.0)  # adapted in burn-in, then frozen
    rate = np.asarray(res.acceptance_rate())
    assert np.all(np.abs(rate - 0.234) < 0.1), rate  # the target acceptance rate 0.234 is reached


def test_rw_positive_site_gamma_poisson_posterior():
    tr = gamma_poisson.generate(jax.random.key(0), ppl.ChoiceMap({"ys": COUNTS}), COUNTS)[0]
    # selection=None: every continuous choice (the counts are discrete, so only the rate)
    res = mcmc.run(jax.random.key(2), mcmc.rw(step_size=0.3, target_accept=0.44), tr, 2000, n_chains=4,
                   burn_in=500)
    lam = np.asarray(res.choices["lam"])
    assert np.all(lam > 0)
    a, b = A + float(np.sum(COUNTS)), B + len(COUNTS)
    check_posterior(lam, a / b, a / b**2)


def test_rw_single_trace_init_step_and_errors():
    tr = normal_normal.generate(jax.random.key(0), ppl.ChoiceMap({"ys": YS}), YS)[0]
    kernel = mcmc.rw("mu", 0.5, adapt=False)
    state = kernel.init(jax.random.key(1), tr, 0)
    tr2, state2, info = jax.jit(kernel.step)(jax.random.key(2), tr, state)
    assert isinstance(info, mcmc.RWInfo) and float(info.step_size) == pytest.approx(0.5)
    assert bool(info.accepted) == bool(tr2.choices["mu"] != tr.choices["mu"])
    assert tr2.get_args()[0] is tr.get_args()[0] or np.array_equal(tr2.get_args()[0], YS)
    with pytest.raises(ppl.ModelError, match="'nu'"):
        mcmc.rw("nu")(jax.random.key(0), tr)
    with pytest.raises(ValueError, match="step_size"):
        mcmc.rw("mu", 0.0)

    @ppl.gen
    def discrete():
        ppl.poisson(3.0) @ "n"

    with pytest.raises(ppl.ModelError, match="no continuous"):
        mcmc.rw()(jax.random.key(0), discrete.simulate(jax.random.key(0)))


def test_typed_infos_keep_dict_style_access():
    tr = normal_normal.generate(jax.random.key(0), ppl.ChoiceMap({"ys": YS}), YS)[0]
    _, info = mcmc.mh(ppl.select("mu"))(jax.random.key(1), tr)
    assert isinstance(info, mcmc.MHInfo) and info._fields == ("acceptance_rate", "accepted")
    assert info["accept_prob"] is info.acceptance_rate and info["accepted"] is info.accepted
    assert "accept_prob" in info and "diverging" not in info
    with pytest.raises(KeyError, match="diverging"):
        info["diverging"]
    k = mcmc.mixture([mcmc.mh(ppl.select("mu")), mcmc.rw("mu", 0.5)])
    res = mcmc.run(jax.random.key(3), k, tr, 20, n_chains=2)
    mix = res.info
    assert isinstance(mix, mcmc.MixtureInfo) and isinstance(mix.infos[1], mcmc.RWInfo)
    j, infos = mix  # still unpacks as (chosen, infos)
    assert j.shape == (2, 20) and len(infos) == 2
    stats = res.to_arviz().sample_stats
    assert {"chosen", "k0_acceptance_rate", "k1_acceptance_rate", "k1_step_size"} <= set(stats)


def test_run_checkpoint_resume_is_bit_identical(tmp_path):
    tr = normal_normal.generate(jax.random.key(0), ppl.ChoiceMap({"ys": YS}), YS)[0]
    kernel = mcmc.rw("mu", 2.0)  # adapts its step size during burn-in: the state crosses the checkpoints
    kw = dict(n_chains=2, burn_in=10, chunk_size=10)
    whole = mcmc.run(jax.random.key(4), kernel, tr, 30, progress=False, **kw)
    d = str(tmp_path / "ckpt")
    mcmc.run(jax.random.key(4), kernel, tr, 20, checkpoint_dir=d, progress=False, **kw)  # "interrupted" at 20
    resumed = mcmc.run(jax.random.key(4), kernel, tr, 30, checkpoint_dir=d, progress=False, **kw)
    for a, b in [(whole.choices["mu"], resumed.choices["mu"]), (whole.info.step_size, resumed.info.step_size),
                 (whole.final_trace.choices["mu"], resumed.final_trace.choices["mu"])]:
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    with pytest.raises(CheckpointMismatchError, match="burn_in"):
        mcmc.run(jax.random.key(4), kernel, tr, 30, checkpoint_dir=d, progress=False, **{**kw, "burn_in": 30})


def test_nuts_pair_cache_is_bounded_and_rebuilds_evicted_pairs(monkeypatch):
    import sys

    nuts_mod = sys.modules["inference.mcmc.nuts"]  # the module (mcmc.nuts is the constructor)
    monkeypatch.setattr(nuts_mod, "_MAX_PAIRS", 1)
    tr = normal_normal.generate(jax.random.key(0), ppl.ChoiceMap({"ys": YS}), YS)[0]
    a, b = mcmc.nuts("mu", step_size=0.5, max_tree_depth=3), mcmc.nuts("mu", step_size=0.4, max_tree_depth=3)
    state = a.init(jax.random.key(1), tr, 0)
    b.init(jax.random.key(1), tr, 0)  # evicts a's pair
    assert len(nuts_mod._PAIRS) == 1
    # a's step gets a fresh pair, configured before its sample kernel runs (tree depth, warm-up)
    tr2, _, info = jax.jit(a.step)(jax.random.key(2), tr, state)
    assert isinstance(info, mcmc.NUTSInfo) and int(info.n_steps) <= 2**3
    assert np.isfinite(float(tr2.choices["mu"]))
    assert len(nuts_mod._PAIRS) == 1


def test_sample_and_run_share_the_steps():
    tr = normal_normal.generate(jax.random.key(0), ppl.ChoiceMap({"ys": YS}), YS)[0]
    k = mcmc.rw("mu", 0.8)
    ch, info, last = jax.jit(lambda key: mcmc.sample(key, k, tr, 50, burn_in=20, thin=2))(jax.random.key(5))
    assert ch["mu"].shape == (50,) and info.acceptance_rate.shape == (50,)
    assert float(last.choices["mu"]) == float(ch["mu"][-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a healthy run: no warning
        res = mcmc.run(jax.random.key(5), k, tr, 50, n_chains=3, burn_in=20, thin=2)
    assert res.choices["mu"].shape == (3, 50)
