"""The first call of ``mcmc.run``: a one-chain run without burn-in, progress bar or checkpoints
is ONE compiled program (phase keys, initialization, draws, chain axis), and it gives the
chunked run's result bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from inference import mcmc


@ppl.gen
def _model(ys):
    mu = ppl.normal(0.0, 1.0) @ "mu"
    s = ppl.gamma(2.0, 2.0) @ "s"
    ppl.normal(jnp.full(ys.shape, mu), s) @ "ys"


_YS = jnp.array([0.3, 1.1, 0.7, -0.2])


def _trace():
    return _model.generate(jax.random.key(0), ppl.ChoiceMap({"ys": _YS, "mu": 0.1, "s": 1.0}), _YS)[0]


def _compiled_during(f):
    names = []

    def listen(name, _d, **kw):
        if name == "/jax/core/compile/backend_compile_duration":
            names.append(kw.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        f()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return names


def test_one_chain_run_without_burn_in_compiles_one_program():
    tr, key = _trace(), jax.random.key(1)
    kernel = mcmc.hmc(ppl.select("mu", "s"), 0.3, 3)
    jax.clear_caches()
    names = _compiled_during(lambda: mcmc.run(key, kernel, tr, 25))
    assert names.count("jit(_whole_run)") == 1, names
    for separate in ("jit(_init)", "jit(_start)", "jit(run_chunk)", "jit(_add_chain_axis)", "jit(_chains_first)"):
        assert separate not in names, names


@pytest.mark.parametrize("kernel, thin", [
    (mcmc.hmc(ppl.select("mu", "s"), 0.3, 3), 1),
    (mcmc.mala(ppl.select("mu", "s"), 0.2), 2),
])
def test_one_program_run_matches_chunked_run(kernel, thin):
    tr, key = _trace(), jax.random.key(2)
    whole = mcmc.run(key, kernel, tr, 20, thin=thin)
    chunked = mcmc.run(key, kernel, tr, 20, thin=thin, progress=True, chunk_size=7)
    for a in ("mu", "s"):
        np.testing.assert_array_equal(np.asarray(whole.choices[a]), np.asarray(chunked.choices[a]))
    np.testing.assert_array_equal(np.asarray(whole.info.acceptance_rate), np.asarray(chunked.info.acceptance_rate))
    np.testing.assert_array_equal(np.asarray(whole.final_trace.get_score()),
                                  np.asarray(chunked.final_trace.get_score()))
    assert whole.choices["mu"].shape == (1, 20)
    # the draws move (the test compares runs, not two copies of the starting point)
    assert float(np.std(np.asarray(whole.choices["mu"]))) > 0


# ------------------------------------------------------------------ the position protocol
_KERNELS = {
    "hmc": mcmc.hmc(ppl.select("mu", "s"), 0.3, 3),
    "mala": mcmc.mala(ppl.select("mu", "s"), 0.2),
    "rw": mcmc.rw(ppl.select("mu", "s"), 0.5, adapt=False),
    "nuts": mcmc.nuts(ppl.select("mu", "s"), step_size=0.3, adapt_step_size=False, adapt_mass_matrix=False),
}


@pytest.mark.parametrize("name", sorted(_KERNELS))
def test_positional_run_matches_trace_steps(name):
    """mcmc.run moves only the kernel state's position (the trace is written for the stored
    choices and once at the end); the draws equal a loop of ``kernel.step`` over traces with
    the runner's keys (step i: fold_in(key, i)): exactly for the real site, to rounding for
    the positive one (a rejected draw is exp(log s)). The final trace is the last draw, with
    the model's score there."""
    kernel, tr, key = _KERNELS[name], _trace(), jax.random.key(3)
    assert kernel.positional
    n = 12
    res = mcmc.run(key, kernel, tr, n)
    k_init, k_draw = jax.random.fold_in(key, 0xFFFFFFFF), key  # the documented phase keys
    state = kernel.init(k_init, tr, 0)
    step = jax.jit(lambda k, t, s: kernel.step(k, t, s, True))
    mus, ss, t = [], [], tr
    for i in range(n):
        t, state, _ = step(jax.random.fold_in(k_draw, i), t, state)
        mus.append(t.choices["mu"])
        ss.append(t.choices["s"])
    np.testing.assert_array_equal(np.asarray(res.choices["mu"][0]), np.asarray(mus))
    np.testing.assert_allclose(np.asarray(res.choices["s"][0]), np.asarray(ss), rtol=1e-6)
    assert len(set(np.asarray(mus).tolist())) > 1  # the chain moved
    final = res.final_trace  # (with a chain axis of size one)
    assert float(final.choices["mu"][0]) == float(res.choices["mu"][0, -1])
    score, _ = _model.assess(ppl.ChoiceMap({"mu": final.choices["mu"][0], "s": final.choices["s"][0], "ys": _YS}), _YS)
    np.testing.assert_allclose(float(final.get_score()[0]), float(score), rtol=1e-5)


def test_positional_runs_agree_across_chunking_chains_and_sample():
    """Several chains (vmapped), a chunked run with burn-in, and mcmc.sample (traceable) keep
    the position protocol's results consistent: each chain's final trace is its last draw."""
    kernel, tr, key = _KERNELS["hmc"], _trace(), jax.random.key(4)
    a = mcmc.run(key, kernel, tr, 9, n_chains=3, burn_in=6)
    b = mcmc.run(key, kernel, tr, 9, n_chains=3, burn_in=6, progress=True, chunk_size=4)
    for addr in ("mu", "s"):
        np.testing.assert_array_equal(np.asarray(a.choices[addr]), np.asarray(b.choices[addr]))
        np.testing.assert_array_equal(np.asarray(a.final_trace.choices[addr]), np.asarray(a.choices[addr][:, -1]))
    ch, _, last = jax.jit(lambda k: mcmc.sample(k, kernel, tr, 9, burn_in=6))(key)
    assert float(last.choices["mu"]) == float(ch["mu"][-1])
    score, _ = _model.assess(last.choices, _YS)
    np.testing.assert_allclose(float(last.get_score()), float(score), rtol=1e-5)


def test_log_density_is_exact_whatever_trace_it_is_written_into():
    """The unconstrained log density at u does not depend on the trace that supplies the other
    choices' values through its own score: it is the written trace's fresh score plus the
    log-Jacobians (``weight + old score`` lost the precision of float32 when the old score is
    huge: a starting trace far from the data). The position protocol writes every position into
    the starting trace, so NUTS's adaptation depended on it (a dense-mass run collapsed its step
    size to 1e-6)."""
    from inference.mcmc.transforms import UnconstrainedView

    ys = jnp.linspace(-1.0, 1.0, 1000)
    near = _model.generate(jax.random.key(0), ppl.ChoiceMap({"ys": ys, "mu": 0.1, "s": 1.0}), ys)[0]
    far = _model.generate(jax.random.key(0), ppl.ChoiceMap({"ys": ys, "mu": 3000.0, "s": 0.5}), ys)[0]
    assert float(far.get_score()) < -1e9
    view = UnconstrainedView(_model, (("mu",), ("s",)))
    u = view.read(near)
    at_near, at_far = float(view.log_density(near, u)), float(view.log_density(far, u))
    assert at_near == at_far
    exact, _ = _model.assess(ppl.ChoiceMap({"ys": ys, "mu": 0.1, "s": 1.0}), ys)
    np.testing.assert_allclose(at_far, float(exact) + float(u[("s",)]), rtol=1e-6)  # log|d exp(v)/dv| = v


@ppl.gen
def _shapes_model():
    a = ppl.normal(jnp.zeros(3), 1.0) @ "a"
    b = ppl.normal(0.0, 1.0) @ "b"
    c = ppl.gamma(jnp.full((2, 2), 2.0), 1.0) @ "c"
    ppl.deterministic(jnp.sum(a) * b) @ "ab"
    ppl.normal(b + jnp.sum(c), 1.0) @ "y"


@pytest.mark.parametrize("kernel", [mcmc.hmc(ppl.select("a", "b", "c"), 0.1, 3),
                                    mcmc.mh(ppl.select("a", "b"))], ids=["hmc", "mh"])
def test_draws_packed_in_the_loop_unpack_to_each_site(tmp_path, kernel):
    """mcmc.run stores a draw's choices of one dtype as one array inside its compiled loop and
    splits it on the host: every site (vector, scalar, matrix, deterministic) gets its own draws,
    equal bit for bit to those of a checkpointed run (which stores them site by site) and of
    mcmc.sample; with several chains too."""
    tr, _ = _shapes_model.generate(jax.random.key(0), ppl.ChoiceMap({"y": 1.5}))
    key = jax.random.key(5)
    whole = mcmc.run(key, kernel, tr, 8)  # one program, packed
    saved = mcmc.run(key, kernel, tr, 8, checkpoint_dir=str(tmp_path / "ck"))  # site by site
    chains = mcmc.run(key, kernel, tr, 8, n_chains=2)
    chains_saved = mcmc.run(key, kernel, tr, 8, n_chains=2, checkpoint_dir=str(tmp_path / "ck2"))
    ch, _, _ = mcmc.sample(key, kernel, tr, 8)
    for addr, shape in (("a", (3,)), ("b", ()), ("c", (2, 2)), ("ab", ())):
        if addr not in whole.choices:  # mh on a, b: c is not stored
            assert addr == "c"
            continue
        assert whole.choices[addr].shape == (1, 8, *shape)
        assert isinstance(whole.choices[addr], jax.Array)
        np.testing.assert_array_equal(np.asarray(whole.choices[addr]), np.asarray(saved.choices[addr]))
        np.testing.assert_array_equal(np.asarray(whole.choices[addr][0]), np.asarray(ch[addr]))
        np.testing.assert_array_equal(np.asarray(chains.choices[addr]), np.asarray(chains_saved.choices[addr]))
    assert float(np.std(np.asarray(whole.choices["b"]))) > 0  # the chain moved


def test_pack_keeps_mixed_dtypes_apart():
    """Draws of different dtypes are not packed (no silent cast): an integer choice keeps its
    dtype through mcmc.run."""
    from inference.mcmc.draws import Packed, pack

    @ppl.gen
    def m():
        k = ppl.poisson(3.0) @ "k"
        ppl.normal(k * 0.1, 1.0) @ "x"

    tr = m.simulate(jax.random.key(0))
    assert not isinstance(pack(tr.choices), Packed)
    res = mcmc.run(jax.random.key(1), mcmc.mh(ppl.select("k", "x")), tr, 5)
    assert res.choices["k"].dtype == tr.choices["k"].dtype
    assert res.choices["x"].dtype == tr.choices["x"].dtype


def test_final_trace_of_a_positional_kernel_is_written_when_first_read():
    from inference.mcmc.result import PendingTrace

    tr, key = _trace(), jax.random.key(5)
    kernel = mcmc.hmc(ppl.select("mu", "s"), 0.3, 3)
    jax.clear_caches()
    res = None

    def run():
        nonlocal res
        res = mcmc.run(key, kernel, tr, 15)

    names = _compiled_during(run)
    assert "jit(_write_final)" not in names, names  # the run alone does not write it
    assert isinstance(object.__getattribute__(res, "final_trace"), PendingTrace)
    names = _compiled_during(lambda: res.final_trace)
    assert names.count("jit(_write_final)") == 1, names
    final = res.final_trace
    assert final is res.final_trace  # written once, kept
    for addr in ("mu", "s"):
        np.testing.assert_array_equal(np.asarray(final.choices[addr]), np.asarray(res.choices[addr][:, -1]))
    # a complete trace at the last draw: its score is the model's log density there
    one = jax.tree_util.tree_map(lambda x: x[0], final.choices)
    lp, _ = _model.assess(one, _YS)
    np.testing.assert_allclose(np.asarray(final.get_score())[0], float(lp), rtol=1e-5)
    # the result is a pytree with a written trace (flattening reads the field)
    leaves = jax.tree_util.tree_leaves(mcmc.run(key, kernel, tr, 15))
    assert not any(isinstance(x, PendingTrace) for x in leaves)


def test_final_trace_written_later_still_knows_the_observations():
    from inference.mcmc.draws import OBSERVED

    trs = mcmc.init_chains(jax.random.key(0), _model, (_YS,), ppl.ChoiceMap({"ys": _YS}), n_chains=2)
    kernel = mcmc.hmc(ppl.select("mu", "s"), 0.3, 3)
    res = mcmc.run(jax.random.key(1), kernel, trs, 10, burn_in=4)
    assert OBSERVED.get(res.final_trace) == (("ys",),)  # registered when the trace is written
    np.testing.assert_array_equal(np.asarray(res.final_trace.choices["ys"]), np.asarray(trs.choices["ys"]))


@ppl.gen
def _bounded(ys):
    b = ppl.gamma(4.0, 2.0) @ "b"
    u = ppl.uniform(0.0, b) @ "u"  # support interval(0, b): depends on another choice
    ppl.normal(jnp.full(ys.shape, u), 1.0) @ "ys"


@ppl.gen
def _with_det(ys):
    mu = ppl.normal(0.0, 1.0) @ "mu"
    s = ppl.gamma(2.0, 2.0) @ "s"
    ppl.deterministic(mu / s) @ "ratio"
    ppl.normal(jnp.full(ys.shape, mu), s) @ "ys"


def _runs_with_and_without_position_choices(kernel, tr, monkeypatch, n=10):
    res = mcmc.run(jax.random.key(5), kernel, tr, n)
    calls = []
    monkeypatch.setattr(type(kernel), "position_choices", lambda self, t, s: calls.append(1))
    jax.clear_caches()
    ref = mcmc.run(jax.random.key(5), kernel, tr, n)
    assert calls, "the runner did not ask the kernel"
    return res, ref


@pytest.mark.parametrize("name", ["hmc", "nuts"])
def test_draws_computed_without_the_model_equal_the_realized_ones(name, monkeypatch):
    """With constant transforms (real ``mu``, positive ``s``) a draw's stored choices are T(u)
    computed directly (no run of the model per draw): bit for bit the values the trace written
    by ``realize`` holds."""
    kernel, tr = _KERNELS[name], _trace()
    st = kernel.init(jax.random.key(1), tr)
    got = kernel.position_choices(tr, st)
    assert set(got) == {("mu",), ("s",)}
    want = kernel.realize(tr, st)
    for p in got:
        assert float(got[p]) == float(want.choices[p]) and got[p].dtype == want.choices[p].dtype
    res, ref = _runs_with_and_without_position_choices(kernel, tr, monkeypatch)
    for a in ("mu", "s"):
        np.testing.assert_array_equal(np.asarray(res.choices[a]), np.asarray(ref.choices[a]))


def test_a_support_that_follows_another_choice_is_realized_through_the_model():
    """interval(0, b) with a sampled b: the transform is not constant, so no direct values; the
    draws come from the written trace and stay inside (0, b)."""
    ys = jnp.array([0.5, 0.9])
    tr = _bounded.generate(jax.random.key(0), ppl.ChoiceMap({"ys": ys, "b": 2.0, "u": 0.5}), ys)[0]
    kernel = mcmc.hmc(ppl.select("b", "u"), 0.1, 5)
    assert kernel.position_choices(tr, kernel.init(jax.random.key(1), tr)) is None
    res = mcmc.run(jax.random.key(2), kernel, tr, 50)
    b, u = np.asarray(res.choices["b"][0]), np.asarray(res.choices["u"][0])
    assert np.all((u > 0) & (u < b)) and len(set(u.tolist())) > 1


def test_deterministic_sites_are_stored_from_the_written_trace():
    """A model with a deterministic site: its stored value needs the model's run at the draw."""
    tr = _with_det.generate(jax.random.key(0), ppl.ChoiceMap({"ys": _YS, "mu": 0.1, "s": 1.0}), _YS)[0]
    kernel = _KERNELS["hmc"]
    res = mcmc.run(jax.random.key(2), kernel, tr, 10)
    np.testing.assert_allclose(np.asarray(res.choices["ratio"][0]),
                               np.asarray(res.choices["mu"][0] / res.choices["s"][0]), rtol=1e-6)
