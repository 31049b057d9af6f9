"""``mcmc.nuts`` hands NumPyro one flat position vector (the selected sites' unconstrained values
raveled): sites of different shapes and transforms (a simplex with one coordinate fewer than
its value, a positive scalar, a real vector) must land back in the right places.

Exact answers: with no observations the posterior is the prior, so the draws' means are
known (Dirichlet(2, 3, 5) -> (0.2, 0.3, 0.5); log of a LogNormal(0.5, 1) -> 0.5; a
Normal((1, -2), 1) vector -> (1, -2)), checked within 4 Monte Carlo standard errors.
"""

import jax
import jax.numpy as jnp
import numpy as np

import ppl
from inference import mcmc
from inference.diagnostics import mcmc as dg


@ppl.gen
def _mixed():
    ppl.dirichlet(jnp.array([2.0, 3.0, 5.0])) @ "p"
    ppl.log_normal(0.5, 1.0) @ "s"
    ppl.normal(jnp.array([1.0, -2.0]), 1.0) @ "v"


def test_nuts_mixed_shapes_and_transforms_match_prior_means():
    tr = _mixed.simulate(jax.random.key(0))
    # no burn-in: one compiled program (fixed step size, unit mass matrix), fast enough for CI
    res = mcmc.run(jax.random.key(1), mcmc.nuts(ppl.select("p", "s", "v"), step_size=0.6), tr, 1500)
    p, s, v = (np.asarray(res.choices[k]) for k in ("p", "s", "v"))
    assert p.shape == (1, 1500, 3) and s.shape == (1, 1500) and v.shape == (1, 1500, 2)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
    checks = [(p[..., i], t) for i, t in enumerate((0.2, 0.3, 0.5))]
    checks += [(np.log(s), 0.5), (v[..., 0], 1.0), (v[..., 1], -2.0)]
    for x, truth in checks:
        ok, z = dg.mean_within_mcse(x, truth)
        assert ok, (truth, z)
