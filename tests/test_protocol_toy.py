"""The trace protocol is enough for inference: a toy combinator defined here (``Twice``: runs a
generative function twice, under "first" and "second"), with its own trace class that only
implements the protocol (``get_choices``, ``get_scores``, ``get_subtrace``; the rest comes from
``ppl.core.Trace``), runs under importance sampling, MH with a selection, HMC and an ELBO
gradient, each checked against the exact answer of a conjugate Gaussian model."""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import ppl
from inference import importance, mcmc, vi
from ppl import ChoiceMap
from ppl import keys as pkeys
from ppl.core import GenerativeFunction, Trace, pack_args, push_path, trace_dataclass

HALVES = ("first", "second")
Z = 4.5  # z-score tolerance (fixed seeds)


@trace_dataclass
class TwiceTrace(Trace):
    gf: Any
    packed_args: Any
    retval: Any
    score: Any
    first: Any
    second: Any

    def get_choices(self):
        return ChoiceMap.from_children({h: getattr(self, h).get_choices() for h in HALVES})

    def get_scores(self):
        return ChoiceMap.from_children({h: getattr(self, h).get_scores() for h in HALVES})

    def get_subtrace(self, addr):
        if addr in HALVES:
            return getattr(self, addr)
        return super().get_subtrace(addr)


def _discard(parts):
    kept = {h: d for h, d in parts.items() if not d.is_empty()}
    return ChoiceMap.from_children(kept) if kept else ChoiceMap.empty()


@dataclasses.dataclass(frozen=True, eq=True)
class Twice(GenerativeFunction):
    """``Twice(gf)(*args) @ "a"``: ``gf(*args)`` at ``("a", "first")`` and ``("a", "second")``."""

    inner: Any

    @property
    def name(self):
        return f"twice({self.inner.name})"

    def _trace(self, args, subs):
        rets = tuple(subs[h].get_retval() for h in HALVES)
        score = subs["first"].get_score() + subs["second"].get_score()
        return TwiceTrace(self, pack_args(args), rets, score, *(subs[h].strip() for h in HALVES))

    def _simulate(self, key, *args):
        subs = {}
        for i, h in enumerate(HALVES):
            with push_path(h):
                subs[h] = self.inner.simulate(pkeys.fold_in(key, i), *args)
        return self._trace(args, subs)

    def _assess(self, choices, *args):
        total, rets = 0.0, []
        for h in HALVES:
            with push_path(h):
                lp, r = self.inner.assess(choices.get_submap(h), *args)
            total, rets = total + lp, rets + [r]
        return total, tuple(rets)

    def _generate(self, key, constraints, *args):
        subs, w = {}, 0.0
        for i, h in enumerate(HALVES):
            with push_path(h):
                subs[h], wi = self.inner.generate(pkeys.fold_in(key, i), constraints.get_submap(h), *args)
            w = w + wi
        return self._trace(args, subs), w

    def _edit(self, key, trace, arg, args, method):
        subs, w, discards = {}, 0.0, {}
        for i, h in enumerate(HALVES):
            sub_arg = arg.get_submap(h) if method == "update" else arg.child(h)
            with push_path(h):
                subs[h], wi, discards[h] = getattr(self.inner, method)(
                    pkeys.fold_in(key, i), trace.get_subtrace(h), sub_arg, *args)
            w = w + wi
        return self._trace(args, subs), w, _discard(discards)

    def _update(self, key, trace, constraints, *args):
        return self._edit(key, trace, constraints, args, "update")

    def _regenerate(self, key, trace, selection, *args):
        return self._edit(key, trace, selection, args, "regenerate")


# ----------------------------------------------------------------- a conjugate Gaussian model
S_Y = 0.5


@ppl.gen
def pair(mu):
    z = ppl.normal(mu, 1.0) @ "z"
    return ppl.normal(z, S_Y) @ "y"


@ppl.gen
def model(*_):
    mu = ppl.normal(0.0, 1.0) @ "mu"
    return Twice(pair)(mu) @ "ys"


Y = (0.8, 1.9)
OBS = ChoiceMap({("ys", "first", "y"): Y[0], ("ys", "second", "y"): Y[1]})
LATENTS = ("mu", ("ys", "first", "z"), ("ys", "second", "z"))


def _exact():
    """Posterior mean/cov of (mu, z1, z2) and log p(y1, y2): (mu, z1, z2, y1, y2) = A @ noise."""
    A = np.array([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 0, 1, 0, 0],
                  [1, 1, 0, S_Y, 0], [1, 0, 1, 0, S_Y]], float)
    C = A @ A.T
    cxx, cxy, cyy = C[:3, :3], C[:3, 3:], C[3:, 3:]
    y = np.array(Y)
    mean = cxy @ np.linalg.solve(cyy, y)
    cov = cxx - cxy @ np.linalg.solve(cyy, cxy.T)
    logz = -0.5 * (y @ np.linalg.solve(cyy, y) + np.log(np.linalg.det(2 * np.pi * cyy)))
    return mean, cov, logz


MEAN, COV, LOGZ = _exact()


def _z_check(samples, exact, what):
    s = np.asarray(samples, np.float64)
    mean, se = s.mean(), s.std() / np.sqrt(len(s))
    assert abs(mean - exact) <= Z * se + 1e-6, f"{what}: mean {mean:.4f} exact {exact:.4f} se {se:.4f}"


def test_twice_trace_protocol_basics():
    tr, w = model.generate(jax.random.key(0), OBS)
    assert sorted(p for p, _ in tr.choices.leaves()) == sorted(
        [("mu",), ("ys", "first", "y"), ("ys", "first", "z"), ("ys", "second", "y"), ("ys", "second", "z")])
    lp, _ = model.assess(tr.choices)
    np.testing.assert_allclose(lp, tr.get_score(), rtol=1e-5)
    total = sum(tr.site_score(p) for p in LATENTS) + tr.site_score(("ys", "first", "y")) + tr.site_score(
        ("ys", "second", "y"))
    np.testing.assert_allclose(total, tr.get_score(), rtol=1e-5)
    # update's weight is the score difference (a new value at a latent inside Twice)
    tr2, w2, discard = model.update(jax.random.key(1), tr, ChoiceMap({("ys", "first", "z"): 0.3}))
    np.testing.assert_allclose(w2, tr2.get_score() - tr.get_score(), rtol=1e-4, atol=1e-5)
    assert float(discard["ys", "first", "z"]) == float(tr.choices["ys", "first", "z"])


def test_importance_sampling_through_twice():
    """Importance sampling (prior proposal) through Twice: ``Z_hat = exp(log_marginal_likelihood)``
    is unbiased for p(y), and ``Z_hat * sum_i w_i mu_i`` (unnormalized) for ``p(y) E[mu | y]``."""
    def one(k):
        ps = importance.sample(k, model, (), OBS, 200)
        return ps.log_marginal_likelihood(), jnp.sum(ps.normalized_weights() * ps.traces.choices["mu"])

    lml, mu_hat = jax.vmap(one)(jax.random.split(jax.random.key(2), 400))
    ratio = np.exp(np.asarray(lml, np.float64) - LOGZ)
    _z_check(ratio, 1.0, "importance Z / Z_exact")
    _z_check(ratio * np.asarray(mu_hat, np.float64), MEAN[0], "importance Z E[mu] / Z_exact")


def _final_states(kernel, n_chains=400, steps=150, seed=3, runner=True):
    """The last state of ``n_chains`` independent chains started from ``model.generate``: draws
    from the posterior, independent across chains (through ``mcmc.run`` or, in one compiled
    program, ``mcmc.sample``)."""
    if runner:
        trs = mcmc.init_chains(jax.random.key(seed), model, (), OBS, n_chains)
        res = mcmc.run(jax.random.key(seed + 1), kernel, trs, 1, n_chains=n_chains, burn_in=steps)
        return [np.asarray(res.choices[p])[:, -1] for p in LATENTS]

    def chain(k):
        k1, k2 = jax.random.split(k)
        tr, _ = model.generate(k1, OBS)
        _, _, last = mcmc.sample(k2, kernel, tr, 1, burn_in=steps)
        return [last.choices[p] for p in LATENTS]

    return [np.asarray(d) for d in jax.jit(jax.vmap(chain))(jax.random.split(jax.random.key(seed), n_chains))]


def _check_posterior(draws, what):
    for i, (d, p) in enumerate(zip(draws, LATENTS)):
        _z_check(d, MEAN[i], f"{what} mean {p}")
        _z_check((d - MEAN[i]) ** 2, COV[i, i], f"{what} var {p}")


def test_mh_with_selection_inside_twice():
    """Independent MH from the prior on the selected choices, two of them inside Twice."""
    _check_posterior(_final_states(mcmc.mh(ppl.select(*LATENTS)), steps=200, runner=False), "mh")


def test_hmc_through_twice():
    kernel = mcmc.hmc(ppl.select(*LATENTS), 0.3, 5)
    _check_posterior(_final_states(kernel, steps=100), "hmc")


@ppl.gen
def zguide(mu, p):
    return ppl.normal(p["a"] * mu + p["b"], jnp.exp(p["lc"])) @ "z"


@ppl.gen
def guide(p):
    mu = ppl.normal(p["m"], jnp.exp(p["ls"])) @ "mu"
    return Twice(zguide)(mu, p) @ "ys"


def test_elbo_gradient_through_twice():
    """The guide uses Twice too. log p - log q is quadratic in the guide's standard-normal noise
    e, so the exact ELBO is f(0) + tr(Hessian_e f(0)) / 2."""
    p = {"m": jnp.array(0.6), "ls": jnp.array(-0.4), "a": jnp.array(0.5), "b": jnp.array(0.2),
         "lc": jnp.array(-0.3)}

    def f(p, e):
        mu = p["m"] + jnp.exp(p["ls"]) * e[0]
        z = [p["a"] * mu + p["b"] + jnp.exp(p["lc"]) * e[i] for i in (1, 2)]
        x = ChoiceMap({"mu": mu, ("ys", "first", "z"): z[0], ("ys", "second", "z"): z[1]})
        return model.assess(x | OBS)[0] - guide.assess(x, p)[0]

    def exact_elbo(p):
        return f(p, jnp.zeros(3)) + 0.5 * jnp.trace(jax.hessian(lambda e: f(p, e))(jnp.zeros(3)))

    exact_elbo = jax.jit(exact_elbo)
    exact = jax.jit(jax.grad(exact_elbo))(p)
    obj = vi.elbo(model, guide)
    ks = jax.random.split(jax.random.key(5), 3000)
    v, g = jax.jit(jax.vmap(lambda k: obj.value_and_grad_estimate(k, p, OBS)))(ks)
    for k in p:
        _z_check(g[k], float(exact[k]), f"elbo grad[{k}]")
    _z_check(v, float(exact_elbo(p)), "elbo value")
    assert float(exact_elbo(p)) < LOGZ
