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
