"""Lane keys: a batch drawing from one shared key must still give independent, correct draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import ppl
from ppl.keys import LANE_AXES, LaneKey, lanes, vmap_lanes

N = 4000


def _lane_values(gf, *args, n=N, key=0):
    return vmap_lanes(lambda k, *a: gf.simulate(k, *a).retval, jax.random.key(key), n, *args, in_axes=None)


@pytest.mark.parametrize(
    "gf,args,mean,var",
    [
        (ppl.normal, (1.0, 2.0), 1.0, 4.0),
        (ppl.gamma, (3.0, 2.0), 1.5, 0.75),
        (ppl.beta, (2.0, 3.0), 0.4, 0.04),
        (ppl.poisson, (3.0,), 3.0, 3.0),
        (ppl.bernoulli, (0.3,), 0.3, 0.21),
    ],
)
def test_lane_draws_have_the_right_moments(gf, args, mean, var):
    x = np.asarray(_lane_values(gf, *args), dtype=np.float64)
    assert x.shape == (N,)
    z = (x.mean() - mean) / np.sqrt(var / N)
    assert abs(z) < 4.0, z
    # variance: compare with its standard error from the fourth moment estimate
    se_var = np.sqrt(np.var((x - x.mean()) ** 2) / N)
    assert abs(x.var() - var) < 4.0 * se_var


def test_lane_draws_are_independent_across_lanes_and_sites():
    @ppl.gen
    def two():
        a = ppl.normal(0.0, 1.0) @ "a"
        b = ppl.normal(0.0, 1.0) @ "b"
        return jnp.stack([a, b])

    v = np.asarray(_lane_values(two))
    r_sites = np.corrcoef(v[:, 0], v[:, 1])[0, 1]
    r_lanes = np.corrcoef(v[:-1, 0], v[1:, 0])[0, 1]
    bound = 4.0 / np.sqrt(N)
    assert abs(r_sites) < bound and abs(r_lanes) < bound
    assert stats.kstest(v[:, 0], "norm").pvalue > 1e-3


def test_batched_parameters_under_lanes():
    locs = jnp.linspace(-5.0, 5.0, N)
    x = jax.vmap(lambda k, m: ppl.normal.simulate(k, m, 0.1).retval, in_axes=(LANE_AXES, 0))(
        lanes(jax.random.key(2), N), locs
    )
    resid = np.asarray((x - locs) / 0.1)
    assert abs(resid.mean()) < 4.0 / np.sqrt(N)
    assert abs(resid.std() - 1.0) < 0.05


def test_event_shaped_sites_under_lanes():
    conc = jnp.ones((N, 3)) * jnp.array([1.0, 2.0, 3.0])
    x = jax.vmap(lambda k, c: ppl.dirichlet.simulate(k, c).retval, in_axes=(LANE_AXES, 0))(
        lanes(jax.random.key(3), N), conc
    )
    assert x.shape == (N, 3)
    np.testing.assert_allclose(np.asarray(x.mean(0)), [1 / 6, 2 / 6, 3 / 6], atol=0.02)
    cov = jnp.array([[1.0, 0.8], [0.8, 1.0]])
    y = vmap_lanes(lambda k: ppl.mv_normal.simulate(k, jnp.zeros(2), cov).retval, jax.random.key(4), N)
    np.testing.assert_allclose(np.cov(np.asarray(y).T), np.asarray(cov), atol=0.1)


def test_lanes_are_deterministic_and_match_scores():
    @ppl.gen
    def model():
        mu = ppl.normal(0.0, 1.0) @ "mu"
        return ppl.normal(jnp.full(3, mu), 1.0) @ "zs"

    f = jax.jit(lambda k: jax.vmap(model.simulate, in_axes=(LANE_AXES,))(lanes(k, 100)))
    a, b = f(jax.random.key(7)), f(jax.random.key(7))
    np.testing.assert_array_equal(np.asarray(a.choices["zs"]), np.asarray(b.choices["zs"]))
    lp, _ = jax.vmap(model.assess)(a.choices)
    np.testing.assert_allclose(np.asarray(lp), np.asarray(a.score), rtol=1e-6)


def test_nested_vmap_and_scan_under_lanes():
    @ppl.gen
    def step(x, _):
        x = ppl.normal(x, 1.0) @ "x"
        return x, x

    @ppl.gen
    def model():
        zs = ppl.normal.repeat(4)(0.0, 1.0) @ "zs"
        _, xs = ppl.scan(step, length=5)(0.0, None) @ "walk"
        return zs, xs

    tr = jax.vmap(model.simulate, in_axes=(LANE_AXES,))(lanes(jax.random.key(5), 2000))
    zs, xs = tr.retval
    assert zs.shape == (2000, 4) and xs.shape == (2000, 5)
    # random-walk variance grows linearly; copies independent
    np.testing.assert_allclose(np.asarray(xs.var(0)), np.arange(1, 6), rtol=0.15)
    c = np.corrcoef(np.asarray(zs).T)
    assert np.max(np.abs(c - np.eye(4))) < 0.1


def test_lane_key_outside_vmap_is_a_plain_draw():
    k = LaneKey(jax.random.key(0), jnp.uint32(3))
    v = ppl.normal.simulate(k, 0.0, 1.0).retval
    ref = jax.random.normal(jax.random.fold_in(jax.random.key(0), 3))
    assert float(v) == float(ref)


def test_multidimensional_normal_draws_are_numpyros_bits():
    """Normal sites of two or more dimensions draw their noise flat (faster); the bits are numpyro's."""
    import numpyro.distributions as nd

    from ppl.keys import draw

    @jax.jit
    def both(k):
        d = nd.Normal(jnp.linspace(-1.0, 1.0, 8), jnp.full((5, 8), 0.5))
        # a plain key; lane keys with batched parameters
        ours, ref = [draw(d, k)], [d.sample(k)]
        locs = jnp.arange(12.0).reshape(4, 3)
        ours.append(jax.vmap(lambda kk, m: draw(nd.Normal(m + jnp.zeros((2, 3)), 1.0), kk),
                             in_axes=(LANE_AXES, 0))(lanes(k, 4), locs))
        ref.append(nd.Normal(locs[:, None, :] + jnp.zeros((4, 2, 3)), 1.0).sample(k))
        return ours, ref

    ours, ref = both(jax.random.key(7))
    for a, b in zip(ours, ref):
        assert a.shape == b.shape and bool(jnp.all(a == b))


def test_lane_draw_of_an_expanded_family_with_batched_parameters():
    import numpyro.distributions as nd

    import ppl
    from ppl import keys

    m = jnp.arange(4.0)
    out = jax.vmap(lambda k, mi: keys.draw(nd.Normal(mi, 1.0).expand((2, 3)), k),
                   in_axes=(keys.LANE_AXES, 0))(keys.lanes(jax.random.key(0), 4), m)
    assert out.shape == (4, 2, 3)
    # each lane's draw is centred on its own parameter
    assert jnp.all(jnp.abs(out.mean(axis=(1, 2)) - m) < 1.7)  # about 4 standard errors

    @ppl.gen
    def model(mu):
        return ppl.dist(nd.Normal(mu, 1.0).expand((2, 3))) @ "x"

    tr = jax.vmap(model.simulate, in_axes=(keys.LANE_AXES, 0))(keys.lanes(jax.random.key(1), 4), m)
    assert tr.choices["x"].shape == (4, 2, 3)


def test_noise_drawn_ahead_equals_each_sites_own_draw():
    """The standard normal noise of a body's normal sites is drawn ahead, vectorized per shape and
    computed in one buffer (ppl.staging.buffered_map); each site still gets exactly the draw of
    its own key, fold_in(key, address_hash(address)), also for an odd number of sites (the buffer
    pads one) and under jax.vmap."""
    from ppl.core import address_hash

    @ppl.gen
    def many():
        xs = [ppl.normal(1.0, 2.0) @ f"x{i}" for i in range(7)]
        vs = [ppl.normal(jnp.zeros(3), 1.0) @ f"v{i}" for i in range(2)]
        return xs, vs, ppl.gamma(2.0, 1.0) @ "g"

    def own(key, addr, shape):
        return jax.random.normal(jax.random.fold_in(key, address_hash(addr)), shape)

    key = jax.random.key(3)
    tr = many.simulate(key)
    for i in range(7):
        assert float(tr.choices[f"x{i}"]) == float(1.0 + 2.0 * own(key, f"x{i}", ()))
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(tr.choices[f"v{i}"]), np.asarray(own(key, f"v{i}", (3,))))
    keys = jax.random.split(jax.random.key(4), 3)
    batch = jax.vmap(lambda k: many.simulate(k).choices["x3"])(keys)
    np.testing.assert_array_equal(np.asarray(batch), np.asarray([many.simulate(k).choices["x3"] for k in keys]))


def test_given_values_get_no_key_and_the_drawn_sites_keep_theirs():
    """generate derives no key for a site given a whole value (it draws nothing): a body with one
    drawn site and observed ones folds in one address hash, not a table of them, and the drawn
    site's value is still the draw of its own key (as in simulate); a masked value still draws."""
    from ppl.choicemap import Masked
    from ppl.staging import inline

    @ppl.gen
    def step(x0):
        x = ppl.normal(x0, 1.0) @ "x"
        ppl.normal(x, 0.5) @ "y"
        return ppl.normal(x, 2.0) @ "z"

    key = jax.random.key(9)
    obs = ppl.ChoiceMap({"y": 0.3, "z": -1.0})
    from ppl.core import address_hash

    tr, _ = step.generate(key, obs, 0.2)
    own = ppl.normal.simulate(jax.random.fold_in(key, address_hash("x")), 0.2, 1.0).retval
    np.testing.assert_allclose(float(tr.choices["x"]), float(own), rtol=1e-6)  # (eager vs compiled rounding)

    def n_folded(c):
        with inline():
            jaxpr = jax.make_jaxpr(lambda k: step.generate(k, c, 0.2)[0].choices["x"])(key)
        return sum(int(np.prod(e.outvars[0].aval.shape)) for e in jaxpr.jaxpr.eqns if e.primitive.name == "random_fold_in")

    assert n_folded(obs) == 1
    # a masked value may be drawn: its site keeps a key (a table of the two drawn sites)
    masked = ppl.ChoiceMap({"y": Masked(jnp.float32(0.3), jnp.array(False)), "z": -1.0})
    assert n_folded(masked) == 2
    tr_m, _ = step.generate(key, masked, 0.2)
    assert float(tr_m.choices["x"]) == float(tr.choices["x"])


def test_address_discovery_draws_and_scores_nothing(monkeypatch):
    """The discovery pass behind the site-key table (the addresses a body visits, its normal sites'
    shapes) runs the body with stand-in values: no distribution is sampled or scored, a nested
    @gen call's sites included, and it still finds every address and shape."""
    from ppl.distributions import DistributionGF
    import ppl.sitekeys as sitekeys

    @ppl.gen
    def inner(s):
        return ppl.gamma(s, 1.0) @ "g"

    @ppl.gen
    def body(n):
        z = ppl.categorical(probs=jnp.ones(3) / 3) @ "z"
        v = ppl.normal(jnp.zeros(n), 1.0) @ "v"
        g = inner(jnp.exp(v[z])) @ "in"
        return ppl.normal(g, 1.0) @ "y"

    calls = []
    for name in ("_simulate", "_log_prob", "draw"):
        orig = getattr(DistributionGF, name)
        monkeypatch.setattr(DistributionGF, name, lambda self, *a, _o=orig, _n=name, **k: (calls.append(_n), _o(self, *a, **k))[1])
    sitekeys._ADDRESS_CACHE.clear()
    addrs, normals = sitekeys._discover(body, (4,))
    assert calls == []
    assert addrs == ("z", "v", "in", "y") and normals == {"v": (4,), "y": ()}
    tr = body.simulate(jax.random.key(0), 4)  # the real run draws (and finds the same addresses)
    assert calls and {a for a, _ in tr.choices} == {"v", "y", "z", ("in", "g")}


def test_filter_step_key_table_equals_site_by_site_keys(monkeypatch):
    """The particle filter derives a step's resampling key and its model's site keys by one
    vectorized hash (a KeyTable); without the table (addresses unknown) every key is derived
    where it is used. Both give the same bits, and the resampling key is none of the site keys."""
    import inference.smc.filters as F
    from inference import smc

    @ppl.gen
    def step(c, _):
        a = ppl.normal(c, 1.0) @ "a"
        b = ppl.gamma(2.0, 1.0) @ "b"
        ppl.normal(a * b, 0.5) @ "y"
        return a, None

    model = ppl.scan(step, length=6)
    obs = ppl.ChoiceMap({"y": jnp.linspace(-1.0, 1.0, 6)})

    def run():
        return smc.particle_filter(jax.random.key(3), model, (0.0, None), obs, 64)

    with_table = run()
    k = jax.random.key(1)
    k_res, k_prop = F.step_keys(step, k, jnp.zeros(4), None, ppl.ChoiceMap({"y": 0.0}))
    assert isinstance(k_prop, ppl.keys.KeyTable) and set(k_prop.table) == {"a", "b"}
    data = lambda x: np.asarray(jax.random.key_data(x))  # noqa: E731
    for a in ("a", "b"):
        assert np.array_equal(data(k_prop.table[a]), data(jax.random.fold_in(k, ppl.core.address_hash(a))))
        assert not np.array_equal(data(k_prop.table[a]), data(k_res))
    assert np.array_equal(data(k_res), data(jax.random.fold_in(k, F.RESAMPLE_DATA)))

    monkeypatch.setattr(F, "keyed_addresses", lambda *a, **kw: None)
    jax.clear_caches()  # the filter's compiled program is traced again
    k_res2, k_prop2 = F.step_keys(step, k, jnp.zeros(4), None, ppl.ChoiceMap({"y": 0.0}))
    assert not isinstance(k_prop2, ppl.keys.KeyTable)
    without = run()
    fields = lambda r: (r.choices, r.log_weights, r.ancestors, r.log_z)  # noqa: E731
    for x, y in zip(jax.tree_util.tree_leaves(fields(with_table)), jax.tree_util.tree_leaves(fields(without))):
        assert np.array_equal(np.asarray(x), np.asarray(y))
