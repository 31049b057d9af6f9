"""inference.diagnostics.sbc: SBC and Geweke's joint-distribution test on a conjugate model, where
the exact posterior is known; a deliberately wrong posterior must fail."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from inference.diagnostics import sbc as D

N_OBS = 4


@ppl.gen
def model():
    mu = ppl.normal(jnp.zeros(2), 1.0) @ "mu"
    s = ppl.gamma(3.0, 1.0) @ "s"  # an extra latent, independent of the data: its prior is its posterior
    ppl.normal(jnp.broadcast_to(mu, (N_OBS, 2)), 1.0) @ "y"
    return s


def posterior(key, obs, sd_scale=1.0, n=99):
    """Exact posterior draws (sd_scale = 1): mu | y ~ N(sum(y) / (n + 1), 1 / (n + 1)) per column."""
    k1, k2 = jax.random.split(key)
    y = obs["y"]
    mean = y.sum(0) / (N_OBS + 1)
    sd = sd_scale / jnp.sqrt(N_OBS + 1.0)
    return {"mu": mean + sd * jax.random.normal(k1, (n, 2)), "s": jax.random.gamma(k2, 3.0, (n,))}


def test_sbc_exact_posterior_has_uniform_ranks():
    res = D.sbc(jax.random.key(0), model, (), ["y"], posterior, 300, vectorize=True)
    assert res.ranks["mu"].shape == (300, 2) and res.ranks["s"].shape == (300,)
    assert res.n_draws == 99 and res.n_bins == 20
    assert res.ranks["mu"].min() >= 0 and res.ranks["mu"].max() <= 99
    assert res.passed, res
    # same key, same ranks (the Python loop and the vmapped call see the same keys)
    looped = D.sbc(jax.random.key(0), model, (), ["y"], jax.jit(posterior), 300)
    np.testing.assert_array_equal(looped.ranks["mu"], res.ranks["mu"])


@pytest.mark.parametrize("sd_scale", [0.5, 2.0])
def test_sbc_wrong_posterior_fails(sd_scale):
    """Too narrow (U-shaped ranks) or too wide (peaked ranks) a posterior fails, for ``mu`` only."""
    res = D.sbc(jax.random.key(1), model, (), ["y"], lambda k, o: posterior(k, o, sd_scale), 300, vectorize=True)
    assert not res.passed
    assert np.all(res.pvalue["mu"] < 1e-6), res.pvalue
    assert res.pvalue["s"] > res.alpha / res.n_tests  # the correct component still looks fine


def test_sbc_bad_input():
    with pytest.raises(ppl.AddressError, match="'ys'.*observed_addrs"):
        D.sbc(jax.random.key(0), model, (), ["ys"], posterior, 300)
    with pytest.raises(ppl.ModelError, match="no draws at address 's'"):
        D.sbc(jax.random.key(0), model, (), ["y"], lambda k, o: {"mu": posterior(k, o)["mu"]}, 300,
              vectorize=True)
    with pytest.raises(ppl.ModelError, match="n_bins must divide 100"):
        D.sbc(jax.random.key(0), model, (), ["y"], posterior, 300, n_bins=7, vectorize=True)
    with pytest.raises(ppl.ModelError, match="args must be a tuple"):
        D.sbc(jax.random.key(0), model, [], ["y"], posterior, 300)


def test_plot_rank_histogram(tmp_path):
    res = D.sbc(jax.random.key(0), model, (), ["y"], posterior, 300, vectorize=True)
    path = tmp_path / "ranks.png"
    fig = D.plot_rank_histogram(res, path=str(path), title="SBC")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["mu[0]", "mu[1]", "s"]
    assert all(ax.get_xlabel() == "rank of the true value among 99 draws" and ax.get_ylabel() == "count"
               for ax in visible)
    assert path.is_file() and path.stat().st_size > 0


def _gibbs(sd_scale):
    def kernel(key, tr):
        obs = {"y": tr.get_choices()["y"]}
        draw = posterior(key, obs, sd_scale, n=1)
        chm = ppl.ChoiceMap({"mu": draw["mu"][0], "s": draw["s"][0], "y": obs["y"]})
        return model.generate(key, chm)[0], {}

    return kernel


EXACT, TOO_WIDE = _gibbs(1.0), _gibbs(2.0)


def test_geweke_exact_kernel_passes():
    good = D.geweke_test(jax.random.key(2), model, (), ["y"], EXACT, 4000)
    assert set(good.z) == {"mu", "mu^2", "s", "s^2"} and good.z["mu"].shape == (2,)
    assert good.passed, good
    custom = D.geweke_test(jax.random.key(2), model, (), ["y"], EXACT, 4000,
                           test_functions={"mu0*mu1": lambda ch: ch["mu"][0] * ch["mu"][1]})
    assert set(custom.z) == {"mu0*mu1"} and custom.passed


def test_geweke_wrong_kernel_fails():
    bad = D.geweke_test(jax.random.key(2), model, (), ["y"], TOO_WIDE, 4000)
    assert not bad.passed, bad
    assert np.all(np.abs(bad.z["mu^2"]) > bad.threshold)  # the second moment drifts
