"""No recompilation when only data values or a re-created (identical) function object change.

``smc.pmmh``, ``smc.particle_gibbs`` (with parameters), ``smc.fit_parameters``,
``smc.fisher_gradient`` and ``amortized.train`` take user functions (``args_fn``, the features of
a deep-sets proposal). Written inline (``lambda theta: (...)``) they are new objects at every call;
the compiled program is keyed on the function's code and constants (inference._fnkey) and the
arrays it closes over are passed as data, so a second call with a new lambda and new data of the
same shapes compiles nothing. Functions that differ in code or in a Python constant must never
share a program.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ppl
from inference import amortized, mcmc, smc
from inference._fnkey import call_with_fns, split_fn
from inference.diagnostics.checks import CompileCounter
from inference.smc.learning import _optimizer_key


def _compiles(fn):
    """(result with its arrays ready, number of XLA compiles it took)."""
    with CompileCounter() as cc:
        out = fn()
        jax.block_until_ready(jax.tree_util.tree_leaves(out))
    return out, cc.count


T = 6


@ppl.gen
def ar_step(carry, _):
    x, a = carry
    x = ppl.normal(a * x, 1.0) @ "x"
    ppl.normal(x, 1.0) @ "y"
    return (x, a), None


@ppl.gen
def a_prior():
    return ppl.normal(0.5, 0.5) @ "a"


AR = ppl.scan(ar_step, length=T)


def _obs(shift=0.0):
    return ppl.ChoiceMap({"y": jnp.sin(jnp.arange(float(T))) + shift})


def _pmmh_args_fn(x0):
    return lambda a: ((x0, a), None)  # a new object at every call, closing over the array x0


def _pmmh(x0, obs):
    return smc.pmmh(jax.random.key(0), a_prior, AR, _pmmh_args_fn(x0), obs, n_particles=8, n_samples=6,
                    step_size=0.3)


def test_pmmh_new_lambda_and_new_data_compile_nothing():
    x0, x4, obs0, obs1 = jnp.asarray(0.0), jnp.asarray(4.0), _obs(), _obs(1.0)
    first, _ = _compiles(lambda: _pmmh(x0, obs0))
    again, n_lambda = _compiles(lambda: _pmmh(x0, obs0))  # a re-created, identical lambda
    assert n_lambda == 0
    np.testing.assert_array_equal(again.samples["a"], first.samples["a"])  # same key, same result
    np.testing.assert_array_equal(again.log_z, first.log_z)
    new, n_data = _compiles(lambda: _pmmh(x4, obs1))  # new closure data and new observations
    assert n_data == 0
    assert not np.allclose(new.log_z, first.log_z)  # the new values are used, not the first call's


def _fisher(args_fn):
    return smc.fisher_gradient(jax.random.key(0), AR, args_fn, {"a": 0.5}, _obs(), 8)


def _fisher_args_fn(c):
    return lambda p: ((c, p["a"]), None)  # c: a Python constant, part of the program


def test_lambdas_differing_only_in_a_constant_do_not_share_a_program():
    lz0, g0 = _fisher(_fisher_args_fn(0.0))
    (lz5, g5), n = _compiles(lambda: _fisher(_fisher_args_fn(5.0)))  # the same code, another constant
    assert n > 0 and float(lz0) != float(lz5) and float(g0["a"]) != float(g5["a"])
    # the first program again for the first constant (nothing compiled), the same answer
    (lz0b, g0b), n = _compiles(lambda: _fisher(_fisher_args_fn(0.0)))
    assert n == 0 and float(lz0b) == float(lz0) and float(g0b["a"]) == float(g0["a"])
    assert split_fn(_fisher_args_fn(0.0))[0] != split_fn(_fisher_args_fn(5.0))[0]
    # literal constants in the code: lambdas that differ only in 0.0 / 5.0
    assert split_fn(lambda a: ((0.0, a), None))[0] != split_fn(lambda a: ((5.0, a), None))[0]
    # 0.0 and -0.0 are different constants (keyed by their bits), 1 and True too
    assert split_fn(_fisher_args_fn(0.0))[0] != split_fn(_fisher_args_fn(-0.0))[0]
    assert split_fn(_fisher_args_fn(1))[0] != split_fn(_fisher_args_fn(True))[0]


class _Settings:
    x0 = 0.0


def test_mutable_objects_in_a_closure_key_the_function_by_identity():
    cfg = _Settings()
    f = lambda a: a + cfg.x0  # noqa: E731  (cfg.x0 may change between calls: never baked into a shared program)
    spec, data = split_fn(f)
    assert data == () and spec.key[0] == "id" and spec == split_fn(f)[0]
    assert spec != split_fn(lambda a: a + cfg.x0)[0]


def test_function_needing_concrete_values_falls_back_to_its_identity():
    run = jax.jit(lambda data, x, spec: spec.rebuild(data)(x), static_argnums=2)
    xs = np.array([0.5, 1.0])  # float() of a closed-over array needs its value
    f = lambda a: a + float(xs[0])  # noqa: E731
    assert split_fn(f)[0].n_lifted == 1
    assert float(call_with_fns(lambda g: run(g[1], 1.0, g[0]), g=f)) == 1.5
    assert float(call_with_fns(lambda g: run(g[1], 1.0, g[0]), g=f)) == 1.5  # remembered: keyed by identity
    ys = jnp.ones(2)
    with pytest.raises(jax.errors.ConcretizationTypeError):  # an error of the function itself still surfaces
        call_with_fns(lambda g: run(g[1], 1.0, g[0]), g=lambda a: (1.0 if a > 0 else 0.0) + ys)


@ppl.gen
def drift_step(x, mu):
    x = ppl.normal(x + mu, 1.0) @ "x"
    ppl.normal(x, 1.0) @ "y"
    return x, None


@ppl.gen
def mu_prior():
    return ppl.normal(0.0, 1.0) @ "mu"


def _pg(offsets, y):
    return smc.particle_gibbs(jax.random.key(1), ppl.scan(drift_step, length=4), None, ppl.ChoiceMap({"y": y}), 6, 5,
                              prior=mu_prior, args_fn=lambda mu: (0.0, offsets + mu),
                              param_kernel=mcmc.rw(ppl.select("params"), 0.5, adapt=False))


def test_particle_gibbs_new_lambda_and_new_data_compile_nothing():
    zeros, ones, threes, twos = jnp.zeros(4), jnp.ones(4), 3.0 * jnp.ones(4), 2.0 * jnp.ones(4)
    first, _ = _compiles(lambda: _pg(zeros, ones))
    again, n_lambda = _compiles(lambda: _pg(zeros, ones))
    assert n_lambda == 0
    np.testing.assert_array_equal(again.params["mu"], first.params["mu"])
    new, n_data = _compiles(lambda: _pg(threes, twos))
    assert n_data == 0
    assert not np.array_equal(new.references["x"], first.references["x"])


def _fit(x0, obs, method, lr=0.05):
    return smc.fit_parameters(jax.random.key(0), AR, lambda p: ((x0, p["a"]), None), {"a": 0.0}, obs,
                              optax.adam(lr), n_steps=3, n_particles=8, method=method)


def test_fit_parameters_new_lambda_optimizer_and_data_compile_nothing():
    method = "fisher"
    x0, x2, obs0, obs1 = jnp.asarray(0.0), jnp.asarray(2.0), _obs(), _obs(1.0)
    first, _ = _compiles(lambda: _fit(x0, obs0, method))
    again, n_lambda = _compiles(lambda: _fit(x0, obs0, method))  # new lambda, new optax.adam
    assert n_lambda == 0
    np.testing.assert_array_equal(again.history["a"], first.history["a"])
    new, n_data = _compiles(lambda: _fit(x2, obs1, method))
    assert n_data == 0
    assert not np.allclose(new.history["a"], first.history["a"])
    # the optimizer is keyed on its structure and hyperparameter values: another learning rate is
    # another program
    assert _optimizer_key(optax.adam(0.05)) == _optimizer_key(optax.adam(0.05))
    assert _optimizer_key(optax.adam(0.05)) != _optimizer_key(optax.adam(0.2))
    assert _optimizer_key(optax.adam(0.05)) != _optimizer_key(optax.sgd(0.05))


def test_fisher_gradient_new_lambda_compiles_nothing():
    def grad(x0):
        return smc.fisher_gradient(jax.random.key(0), AR, lambda p: ((x0, p["a"]), None), {"a": 0.5}, _obs(), 8)

    x0, x3 = jnp.asarray(0.0), jnp.asarray(3.0)
    (lz, g), _ = _compiles(lambda: grad(x0))
    (lz2, g2), n = _compiles(lambda: grad(x0))
    assert n == 0 and float(lz2) == float(lz) and float(g2["a"]) == float(g["a"])
    (lz3, g3), n = _compiles(lambda: grad(x3))
    assert n == 0 and float(lz3) != float(lz)
    # the lifted value is read correctly: the same computation with 3.0 as a constant of the program
    lz_c, g_c = smc.fisher_gradient(jax.random.key(0), AR, lambda p: ((3.0, p["a"]), None), {"a": 0.5}, _obs(), 8)
    np.testing.assert_allclose([lz3, g3["a"]], [lz_c, g_c["a"]], rtol=1e-5)


@ppl.gen
def set_model():
    mu = ppl.normal(0.0, 3.0) @ "mu"
    return ppl.normal(jnp.full(4, mu), 1.0) @ "y"


def _proposal(scale=1.0):
    return amortized.deep_sets_proposal(lambda obs: scale * obs["y"][:, None], {"mu": "real"}, hidden=4)


def test_amortized_train_with_a_rebuilt_proposal_compiles_nothing():
    q = _proposal()
    params = q.init_params(jax.random.key(0), set_model, (), ["y"], n_calibrate=32)

    def train(q, params):
        return amortized.train(jax.random.key(1), set_model, (), ["y"], q, params, optax.adam(1e-2), 4,
                               batch_size=8, progress=False)

    first, _ = _compiles(lambda: train(q, params))
    again, n = _compiles(lambda: train(_proposal(), params))  # the proposal built again the same way
    assert n == 0
    np.testing.assert_array_equal(again.losses, first.losses)
    shifted = jax.block_until_ready(jax.tree_util.tree_map(lambda x: x + 0.1, params))
    new, n = _compiles(lambda: train(_proposal(), shifted))  # new parameter values
    assert n == 0 and not np.array_equal(new.losses, first.losses)
    # another constant in the features function: another proposal (not the cached one)
    assert _proposal(2.0) is not q and _proposal(1.0) is q


XS_GLOBAL = jnp.arange(3.0)


def test_split_fn_lifts_closure_default_and_global_arrays():
    run = jax.jit(lambda data, spec: spec.rebuild(data)(1.0), static_argnums=1)

    def make(c, xs):
        return lambda a, d=jnp.ones(3): a * c + xs + d + XS_GLOBAL

    s1, d1 = split_fn(make(2.0, jnp.zeros(3)))
    s2, d2 = split_fn(make(2.0, jnp.full(3, 5.0, jnp.float32)))
    assert s1 == s2 and len(d1) == 3  # closure xs, default d, global XS_GLOBAL
    np.testing.assert_array_equal(run(d1, s1), 3.0 + jnp.arange(3.0))
    with CompileCounter() as cc:
        np.testing.assert_array_equal(run(d2, s2), 8.0 + jnp.arange(3.0))
    assert cc.count == 0
    assert split_fn(make(3.0, jnp.zeros(3)))[0] != s1
    assert split_fn(make(2.0, jnp.zeros(4)))[0] != s1  # other shapes: another program
    # an unhashable object in the closure: keyed by the function's identity
    box = [{1, 2}, {3}]
    f = lambda a: a + len(box)  # noqa: E731
    spec, data = split_fn(f)
    assert data == () and spec == split_fn(f)[0] and spec != split_fn(lambda a: a + len(box))[0]
    out = call_with_fns(lambda g: run(g[1], g[0]), g=lambda a: a + XS_GLOBAL)
    np.testing.assert_array_equal(out, 1.0 + jnp.arange(3.0))


@pytest.mark.parametrize("name", ["pmmh", "fisher_gradient", "score_climbing_step"])
def test_errors_still_name_the_public_function(name):
    from inference.smc import ParticleCountError

    fn = getattr(smc, name)
    args = {"pmmh": (a_prior, AR, _pmmh_args_fn(0.0), _obs(), 0, 3),
            "fisher_gradient": (AR, _fisher_args_fn(0.0), {"a": 0.5}, _obs(), 0),
            "score_climbing_step": (AR, _fisher_args_fn(0.0), {"a": 0.5}, _obs(), 0, {})}[name]
    with pytest.raises(ParticleCountError, match=f"smc.{name}: n_particles"):
        fn(jax.random.key(0), *args)
