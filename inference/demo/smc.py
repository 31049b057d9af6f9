"""Demo section: a particle filter on a built-in state-space data set.

The data set is a 1-D tracking problem (a linear-Gaussian state-space model simulated with a fixed
seed), so the exact answers are known: the demo compares the particle filter's log-evidence and
filtered means with the Kalman filter, reports the ESS over time, and plots the filtered
trajectory against the true one.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

import ppl
from inference import smc

A, Q, R = 0.95, 0.5, 1.0
T = 100


@ppl.gen
def step(x, _):
    x = ppl.normal(A * x, Q) @ "x"
    ppl.normal(x, R) @ "y"
    return x, None


def tracking_data(seed: int = 2024):
    """The built-in data set: ``(true_states, observations)``, each of shape ``(T,)``."""
    rng = np.random.default_rng(seed)
    xs, ys, x = np.zeros(T), np.zeros(T), 0.0
    for t in range(T):
        x = A * x + Q * rng.normal()
        xs[t], ys[t] = x, x + R * rng.normal()
    return xs, ys


def kalman(ys):
    """Exact log-evidence and filtering means/variances (for comparison)."""
    m, P, ll, means, vars_ = 0.0, 0.0, 0.0, [], []
    for y in ys:
        mp, Pp = A * m, A * A * P + Q * Q
        S = Pp + R * R
        ll += -0.5 * (np.log(2 * np.pi * S) + (y - mp) ** 2 / S)
        K = Pp / S
        m, P = mp + K * (y - mp), (1 - K) * Pp
        means.append(m), vars_.append(P)
    return ll, np.array(means), np.array(vars_)


def run(out_dir: str, key) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, ys = tracking_data()
    model = ppl.scan(step, length=T)
    obs = ppl.ChoiceMap({"y": jnp.asarray(ys, jnp.float32)})
    k1, k2 = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
    print(f"running a bootstrap particle filter, 1000 particles x {T} steps (compile + run) ...", flush=True)
    res = smc.particle_filter(k1, model, (0.0, None), obs, 1000, ess_threshold=0.5)
    ll, km, kv = kalman(ys)
    print(f"particle filter (N=1000, T={T}, resample when ESS < 50%): log Z-hat = {float(res.log_z):.3f}")
    print(f"exact log Z (Kalman filter)                                = {ll:.3f}")
    ess = np.asarray(res.ess)
    print(f"ESS over time: min {ess.min():.0f}, median {np.median(ess):.0f}, max {ess.max():.0f}; "
          f"resampled at {int(res.resampled.sum())} of {T} steps; all particles died: {bool(res.all_dead)}")
    mean = np.asarray(res.filtered_mean(lambda ch: ch["x"]))
    second = np.asarray(res.filtered_mean(lambda ch: ch["x"] ** 2))
    sd = np.sqrt(np.maximum(second - mean**2, 0.0))
    print(f"filtered means vs Kalman: max |difference| = {np.abs(mean - km).max():.3f} "
          f"(filtering sd ~ {np.sqrt(kv[-1]):.3f}); RMSE vs truth {np.sqrt(np.mean((mean - xs) ** 2)):.3f}")
    print("drawing 20 smoothed paths by backward sampling (compile + run) ...", flush=True)
    paths = smc.backward_sample(k2, model, (0.0, None), obs, res, 20)["x"]

    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    t = np.arange(T)
    axes[0].plot(t, np.asarray(paths).T, color="C2", alpha=0.15, lw=0.8)
    axes[0].plot(t, xs, "k-", lw=1.5, label="true state")
    axes[0].plot(t, ys, "k.", ms=3, label="observations")
    axes[0].plot(t, mean, "C0-", label="filtered mean (particle filter)")
    axes[0].fill_between(t, mean - 2 * sd, mean + 2 * sd, color="C0", alpha=0.2, label="±2 sd")
    axes[0].plot(t, km, "C3--", lw=1, label="Kalman filter mean")
    axes[0].plot([], [], color="C2", alpha=0.5, label="smoothed paths (backward sampling)")
    axes[0].set_title(f"Particle filter on the tracking data set: log Z-hat {float(res.log_z):.2f} (exact {ll:.2f})")
    axes[0].set_ylabel("state x")
    axes[0].set_xlabel("time step")
    axes[0].xaxis.set_tick_params(labelbottom=True)
    axes[0].legend(fontsize=7, ncol=3)
    axes[1].plot(t, ess, "C1-")
    axes[1].plot(t[np.asarray(res.resampled)], ess[np.asarray(res.resampled)], "C1v", ms=4, label="resampled")
    axes[1].set_ylabel("ESS")
    axes[1].set_xlabel("time step")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, "smc_filter.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")
