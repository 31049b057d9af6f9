"""A user-written variational objective: the Rényi alpha objective, from ``vi.expectation``.

Li and Turner's variational Rényi bound is ``L_alpha(q) = log E_q[(p(x, z) / q(z))^(1 - alpha)] /
(1 - alpha)``; ``alpha -> 1`` gives the ELBO, ``alpha = 0`` gives ``log p(x)``, and for ``0 < alpha < 1``
it lies between them. Its inner expectation ``E_q[w^(1 - alpha)]`` is an *expectation program*
written in a few lines with ``@vi.expectation`` (the mean over K = 16 guide draws, as the
library's ``iwelbo`` draws its particles): ``.estimate`` is unbiased for it, ``.grad_estimate``
for its gradient (reparameterized through the Gaussian guide), and maximizing it with ``vi.fit``
maximizes ``L_alpha`` (the log is increasing).

Model (conjugate): ``z ~ Normal(0, 1)``, ``x ~ Normal(z, 0.5)``, observed ``x = 1``; guide
``q = Normal(m, exp(log_s))``. Exact answers: the posterior is ``Normal(0.8, sqrt(0.2))``,
``log p(x) = log Normal(1; 0, sqrt(1.25))``, and at any guide ``E_q[w^(1 - alpha)]`` and its gradient
are one-dimensional integrals, computed here by quadrature on a fine grid (and by central
differences of the quadrature for the gradient).

Checks (alpha = 0.5): at the guide ``(m, log_s) = (0.2, 0)`` the mean of 4,000 (small: 2,000) estimates of the
value and of each gradient component is within 4 standard errors of the exact one; the gradient
points towards the posterior (d/dm > 0); at the exact posterior ``w = p(x)`` for every draw, so
``L_alpha = log p(x)`` to float precision, and the mean gradient is 0 within 4 standard errors; ``vi.fit`` with Adam reaches the posterior
(|m - 0.8| < 0.05, |s / 0.447 - 1| < 0.1).

Expected output (Monte Carlo error aside)::

    Renyi objective (alpha = 0.5) at m = 0.2, log_s = 0.0 (2000 estimates)
    value      MC 0.3907 (se 0.0016)  exact 0.3917   -> L_alpha = -1.880 (exact -1.874)
    d/dm       MC 0.0960 (se 0.0029)  exact 0.0979
    d/dlog_s   MC -0.0813 (se 0.0026)  exact -0.0816
    at the posterior: mean gradient m -0.0025 (se 0.0031), log_s 0.0012 (se 0.0020); L_alpha = -1.4305, log p(x) = -1.4305
    fit (400 Adam steps): m = 0.803, s = 0.432 (posterior 0.8, 0.447)
    plot: renyi_objective.png (exact L_alpha over m, MC estimates, the fit's path)

Run: ``python docs/examples/renyi_objective.py`` or ``ppl examples renyi_objective``.
"""

from __future__ import annotations

import os

import numpy as np

ALPHA, X, NOISE_SD, K = 0.5, 1.0, 0.5, 16
POST_MEAN, POST_SD = 0.8, np.sqrt(0.2)
LOG_PX = float(-0.5 * X**2 / 1.25 - 0.5 * np.log(2 * np.pi * 1.25))


def _log_normal(z, m, s):
    return -0.5 * ((z - m) / s) ** 2 - np.log(s * np.sqrt(2 * np.pi))


def exact_value(m, log_s, alpha=ALPHA):
    """E_q[(p(x, z)/q(z))^(1 - alpha)] by quadrature (float64, 200,001 points on [-12, 12])."""
    z = np.linspace(-12.0, 12.0, 200_001)
    s = np.exp(log_s)
    log_q = _log_normal(z, m, s)
    log_p = _log_normal(z, 0.0, 1.0) + _log_normal(X, z, NOISE_SD)
    return float(np.trapezoid(np.exp(log_q + (1 - alpha) * (log_p - log_q)), z))


def exact_grad(m, log_s, h=1e-4):
    return np.array([(exact_value(m + h, log_s) - exact_value(m - h, log_s)) / (2 * h),
                     (exact_value(m, log_s + h) - exact_value(m, log_s - h)) / (2 * h)])


def main(small: bool = False, out_dir=None):
    import jax
    import jax.numpy as jnp
    import matplotlib
    import optax

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import ppl
    from ppl import ChoiceMap
    from inference import vi

    @ppl.gen
    def model():
        z = ppl.normal(0.0, 1.0) @ "z"
        return ppl.normal(z, NOISE_SD) @ "x"

    @ppl.gen
    def guide(params):
        return ppl.normal(params["m"], jnp.exp(params["log_s"])) @ "z"

    def renyi(alpha, K):
        """The mean of w^(1 - alpha) over K draws from the guide (unbiased for E_q[w^(1 - alpha)])."""
        @vi.expectation
        def objective(key, params, observations):
            zs = guide.repeat(K).simulate(key, params).choices
            log_q = jax.vmap(lambda ch: guide.assess(ch, params)[0])(zs)
            log_p = jax.vmap(lambda ch: model.assess(ch | observations)[0])(zs)
            return jnp.mean(jnp.exp((1.0 - alpha) * (log_p - log_q)))
        return objective

    objective, obs = renyi(ALPHA, K), ChoiceMap({"x": X})
    n = 2000 if small else 4000
    p0 = {"m": jnp.array(0.2), "log_s": jnp.array(0.0)}
    many = jax.jit(jax.vmap(objective.value_and_grad_estimate, in_axes=(0, None, None)))
    values, grads = many(jax.random.split(jax.random.key(0), n), p0, obs)
    values, gm, gs = (np.asarray(a, np.float64) for a in (values, grads["m"], grads["log_s"]))
    ex_v, ex_g = exact_value(0.2, 0.0), exact_grad(0.2, 0.0)

    failures = []
    to_bound = lambda v: np.log(v) / (1 - ALPHA)  # noqa: E731
    print(f"Renyi objective (alpha = {ALPHA}) at m = 0.2, log_s = 0.0 ({n} estimates)")
    for name, est, truth in (("value", values, ex_v), ("d/dm", gm, ex_g[0]), ("d/dlog_s", gs, ex_g[1])):
        se = est.std(ddof=1) / np.sqrt(n)
        extra = f"   -> L_alpha = {to_bound(est.mean()):.3f} (exact {to_bound(truth):.3f})" if name == "value" else ""
        print(f"{name:10s} MC {est.mean():.4f} (se {se:.4f})  exact {truth:.4f}{extra}")
        if abs(est.mean() - truth) > 4 * se:
            failures.append(f"{name}: MC {est.mean():.4f} vs exact {truth:.4f} (4 se = {4 * se:.4f})")
    if not gm.mean() > 0:
        failures.append("the gradient in m does not point towards the posterior mean")

    post = {"m": jnp.array(POST_MEAN), "log_s": jnp.array(np.log(POST_SD))}
    v_post, g_post = many(jax.random.split(jax.random.key(1), n), post, obs)
    l_post = float(to_bound(np.mean(np.asarray(v_post, np.float64))))
    g_post = {k: np.asarray(v, np.float64) for k, v in g_post.items()}
    g_mean = {k: v.mean() for k, v in g_post.items()}
    g_se = {k: v.std(ddof=1) / np.sqrt(n) for k, v in g_post.items()}
    print(f"at the posterior: mean gradient m {g_mean['m']:.4f} (se {g_se['m']:.4f}), log_s {g_mean['log_s']:.4f} "
          f"(se {g_se['log_s']:.4f}); L_alpha = {l_post:.4f}, log p(x) = {LOG_PX:.4f}")
    # there w = p(x) for every z: every estimate of the value is p(x)^(1 - alpha); the gradient
    # estimates are not 0 (the guide's score term) but have mean 0
    for k in g_post:
        if abs(g_mean[k]) > 4 * g_se[k]:
            failures.append(f"at the exact posterior: mean d/d{k} {g_mean[k]:.4f}, exact 0 (4 se = {4 * g_se[k]:.4f})")
    if abs(l_post - LOG_PX) > 1e-4:
        failures.append(f"at the exact posterior: L_alpha {l_post:.5f} vs log p(x) {LOG_PX:.5f}")

    n_steps = 400 if small else 1000
    res = vi.fit(jax.random.key(2), objective, p0, optax.adam(optax.exponential_decay(0.05, n_steps // 2, 0.1)),
                 n_steps, obs, progress=False)
    m_fit, s_fit = float(res.params["m"]), float(np.exp(res.params["log_s"]))
    print(f"fit ({n_steps} Adam steps): m = {m_fit:.3f}, s = {s_fit:.3f} (posterior {POST_MEAN}, {POST_SD:.3f})")
    if abs(m_fit - POST_MEAN) > 0.05 or abs(s_fit / POST_SD - 1) > 0.1:
        failures.append(f"fit: m = {m_fit:.3f}, s = {s_fit:.3f}; posterior {POST_MEAN}, {POST_SD:.3f}")

    fig, ax = plt.subplots(figsize=(6, 4))
    ms = np.linspace(-1.0, 2.0, 61)
    for log_s in (0.0, np.log(POST_SD)):
        ax.plot(ms, [to_bound(exact_value(m, log_s)) for m in ms], label=f"exact L_alpha, s = {np.exp(log_s):.2f}")
    ax.errorbar([0.2], [to_bound(values.mean())], yerr=[values.std() / np.sqrt(n) / values.mean() / (1 - ALPHA)],
                fmt="o", color="k", label="MC estimate at (0.2, s = 1)")
    ax.axhline(LOG_PX, color="gray", ls=":", label="log p(x)")
    ax.axvline(m_fit, color="tab:red", ls="--", label="m after vi.fit")
    ax.set_xlabel("guide mean m")
    ax.set_ylabel(f"Renyi bound L_alpha (alpha = {ALPHA})")
    ax.set_title("A user-written Renyi objective")
    ax.legend(fontsize=8)
    out_dir = out_dir or "."
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "renyi_objective.png")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"plot: {path}")

    if failures:
        raise AssertionError("Renyi objective differs from the exact answer: " + "; ".join(failures))
    return {"value": float(values.mean()), "exact_value": ex_v, "grad": [float(gm.mean()), float(gs.mean())],
            "exact_grad": ex_g.tolist(), "fit": (m_fit, s_fit), "plot": path}


if __name__ == "__main__":
    main()
