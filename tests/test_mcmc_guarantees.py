"""Guarantees of ``mcmc.run``: chunked (progress) runs are bit-identical to one-piece runs for
adaptive kernels, gradient kernels report divergences and the runner warns about stuck or
diverging chains, and only the choices a kernel moves are stored per draw."""

import dataclasses
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from inference import mcmc


@ppl.gen
def loc_scale(ys):
    mu = ppl.normal(0.0, 2.0) @ "mu"
    s = ppl.gamma(2.0, 2.0) @ "s"
    ppl.normal(jnp.full(ys.shape, mu), s) @ "ys"


YS = jnp.array([0.3, 1.2, 0.8, 2.1, 1.5])


def ls_trace():
    return loc_scale.generate(jax.random.key(0), ppl.ChoiceMap({"ys": YS}), YS)[0]


def assert_bitwise_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape and x.dtype == y.dtype
        assert x.tobytes() == y.tobytes(), f"{np.sum(x != y)} of {x.size} entries differ"


def run_quiet(*args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mcmc.run(*args, **kw)


# ------------------------------------------------------------------------------ chunking
@pytest.mark.parametrize("which", ["hmc", "nuts"])
def test_adaptive_kernels_bit_identical_with_progress_chunks(which):
    """Chunks of 7 steps: four burn-in chunks and a partial one, then sampling chunks, so a chunk
    boundary falls inside the warm-up and the draws; the warm-up sees the same steps and keys."""
    if which == "hmc":
        k, thin = mcmc.hmc(ppl.select("mu", "s"), 0.1, 5, adapt_step_size=True), 2
    else:
        k, thin = mcmc.nuts(ppl.select("mu", "s")), 1
    tr = ls_trace()
    whole = run_quiet(jax.random.key(1), k, tr, 40, n_chains=2, burn_in=30, thin=thin, progress=False)
    chunked = run_quiet(jax.random.key(1), k, tr, 40, n_chains=2, burn_in=30, thin=thin, progress=True,
                        chunk_size=7)
    assert whole.choices["mu"].shape == (2, 40)
    assert_bitwise_equal(whole.choices, chunked.choices)
    assert_bitwise_equal(whole.info, chunked.info)
    assert_bitwise_equal(whole.final_trace.choices, chunked.final_trace.choices)
    # the step size adapted during burn-in and is frozen afterwards
    steps = np.asarray(whole.info["step_size"])
    assert np.all(steps == steps[:, :1]) and not np.allclose(steps[:, 0], k.step_size)


# ------------------------------------------------------------------------------ divergences
@pytest.mark.parametrize("kernel", [mcmc.hmc(ppl.select("mu", "s"), 50.0, 5), mcmc.mala(ppl.select("mu", "s"), 50.0)],
                         ids=["hmc", "mala"])
def test_huge_step_reports_divergences_and_warns(kernel):
    with pytest.warns(UserWarning) as record:
        res = mcmc.run(jax.random.key(2), kernel, ls_trace(), 100, n_chains=2)
    messages = [str(w.message) for w in record]
    stuck = [m for m in messages if "accepted less than 1%" in m]
    diverged = [m for m in messages if "divergent transitions" in m]
    assert stuck and diverged, messages
    for m in stuck + diverged:
        assert f"kernel {kernel.name}" in m and "chain(s) [0, 1]" in m and "smaller step size" in m
    assert res.info["diverging"].shape == (2, 100)
    div = res.divergences()
    assert div.shape == (2,) and np.all(div > 90), div
    assert np.all(np.asarray(res.acceptance_rate()) < 0.01)


def test_sane_step_no_warning_and_zero_divergences():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        res = mcmc.run(jax.random.key(3), mcmc.hmc(ppl.select("mu", "s"), 0.2, 5), ls_trace(), 100, n_chains=2)
    assert not [w for w in record if "mcmc.run" in str(w.message)], [str(w.message) for w in record]
    assert res.divergences().tolist() == [0, 0]
    assert np.all(np.asarray(res.acceptance_rate()) > 0.5)


def test_warning_names_the_component_of_a_cycle():
    k = mcmc.cycle(mcmc.mh(ppl.select("s")), mcmc.mala(ppl.select("mu"), 100.0))
    with pytest.warns(UserWarning, match=r"kernel cycle component 1 \(mala\): chain\(s\) \[0\]"):
        res = mcmc.run(jax.random.key(4), k, ls_trace(), 50)
    none, mala_div = res.divergences()
    assert none is None and int(mala_div[0]) > 40


# ------------------------------------------------------------------------------ storage
def test_draws_hold_only_latents_bytes():
    n_obs, n_chains, n = 2000, 4, 2000

    @ppl.gen
    def model(xs):
        mu = ppl.normal(0.0, 1.0) @ "mu"
        ppl.normal(mu + 0.0 * xs, 1.0) @ "ys"

    xs = jnp.zeros(n_obs)
    ys = 0.3 + jax.random.normal(jax.random.key(5), (n_obs,))
    tr, _ = model.generate(jax.random.key(6), ppl.ChoiceMap({"ys": ys}), xs)
    res = run_quiet(jax.random.key(7), mcmc.mh(ppl.select("mu")), tr, n, n_chains=n_chains)
    total = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(res))
    assert total < 2 * 2**20, total  # draws of ys would be 4 * 2000 * 2000 * 4 bytes = 61 MiB
    assert res.choices["mu"].shape == (n_chains, n)
    assert res.choices.addresses() == ["mu"]
    with pytest.raises(ppl.AddressError, match="'ys'.*never moves.*observation.*fixed_choices"):
        res.choices["ys"]
    np.testing.assert_array_equal(np.asarray(res.fixed_choices["ys"]), np.asarray(ys))
    idata = res.to_arviz()
    assert list(idata.posterior.data_vars) == ["mu"]
    assert list(res.summary().index) == ["mu"]


@ppl.gen
def left():
    return ppl.normal(-1.0, 1.0) @ "a"


@ppl.gen
def right():
    return ppl.normal(1.0, 1.0) @ "a"


@ppl.gen
def mixed(ys):
    c = ppl.flip(0.5) @ "c"
    a = ppl.cond(c, right, left)() @ "branch"
    mu = ppl.normal(0.0, 1.0) @ "mu"
    s = ppl.gamma(2.0, 2.0) @ "s"
    ppl.normal(jnp.full(ys.shape, mu + a), s) @ "ys"


@ppl.gen
def mu_walk(tr):
    ppl.normal(tr.choices["mu"], 0.3) @ "mu"


@dataclasses.dataclass(frozen=True)
class Opaque(mcmc.Kernel):
    """A custom kernel that does not say which choices it moves."""

    inner: Any
    name = "opaque"

    def step(self, key, trace, state, synced=False):
        return self.inner.step(key, trace, state, synced)


def _stored(kernel, trace, batched=False, observed=()):
    from inference.mcmc.draws import stored_selection as _stored_selection

    sel = _stored_selection(kernel, trace, batched, observed)
    paths = [p for p, _ in jax.eval_shape(lambda t: t.choices, trace).leaves()]
    return sorted("/".join(p) for p in paths if sel is None or sel.contains(p))


def test_stored_addresses_follow_the_kernel():
    obs = ppl.ChoiceMap({"ys": YS})
    tr = mixed.generate(jax.random.key(0), obs, YS)[0]
    # selection kernels store their selection; branch choices are always stored
    assert _stored(mcmc.mh(ppl.select("mu")), tr) == ["branch/a", "mu"]
    assert _stored(mcmc.cycle(mcmc.gibbs("c"), mcmc.hmc(ppl.select("s"), 0.2, 3)), tr) == ["branch/a", "c", "s"]
    k = mcmc.mixture([mcmc.mh(mu_walk), mcmc.repeat(mcmc.nuts(ppl.select("s")), 2)])
    assert _stored(k, tr) == ["branch/a", "mu", "s"]  # a proposal's addresses
    # a kernel that cannot say: every choice but the observations, when they are known
    assert _stored(Opaque(mcmc.mh(ppl.select("mu"))), tr) == ["branch/a", "c", "mu", "s", "ys"]
    assert _stored(Opaque(mcmc.mh(ppl.select("mu"))), tr, observed=[("ys",)]) == ["branch/a", "c", "mu", "s"]

    # end to end: mcmc.run knows the observations given to init_chains
    trs = mcmc.init_chains(jax.random.key(2), mixed, (YS,), obs, 2)
    res = run_quiet(jax.random.key(3), Opaque(mcmc.mh(ppl.select("mu"))), trs, 5)
    assert sorted(map(str, res.choices.addresses())) == ["('branch', 'a')", "c", "mu", "s"]
    assert res.choices["branch", "a"].shape == (2, 5) and res.fixed_choices["ys"].shape == (2, 5)
    # unselected latents keep their initial values, per chain, and are not stored per draw
    res = run_quiet(jax.random.key(4), mcmc.cycle(mcmc.mh(ppl.select("mu")), mcmc.gibbs("c")), trs, 5)
    assert res.choices["mu"].shape == (2, 5) and res.choices["c"].shape == (2, 5)
    np.testing.assert_array_equal(np.asarray(res.fixed_choices["s"]), np.asarray(trs.choices["s"]))
    np.testing.assert_array_equal(np.asarray(res.final_trace.choices["s"]), np.asarray(trs.choices["s"]))
    with pytest.raises(ppl.AddressError, match="'s'.*outside the kernel's selection"):
        res.choices["s"]
