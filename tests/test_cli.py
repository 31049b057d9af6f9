"""The ``ppl`` command: version, demo section checking, demo output format, the bench registry."""

import os
import re
import subprocess
import sys

import pytest

import ppl
from inference import cli


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"ppl {ppl.__version__}"


def test_demo_unknown_section_lists_valid_ones(capsys):
    from inference.demo import SECTIONS

    assert cli.main(["--no-compilation-cache", "demo", "--only", "modeling", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "unknown section 'nosuch'" in err
    assert "valid sections are: " + ", ".join(SECTIONS) in err
    assert cli.main(["--no-compilation-cache", "demo", "--only"]) == 2
    assert "at least one section" in capsys.readouterr().err


def test_demo_modeling_section_output(tmp_path, capsys, monkeypatch):
    """The fastest section, in-process: each step announced, plain numbers, every axis labeled,
    every written file listed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    saved = []
    real_savefig = Figure.savefig

    def checking_savefig(fig, path, *a, **kw):
        for ax in fig.axes:
            if ax.get_visible():
                saved.append((os.path.basename(str(path)), ax.get_title(), ax.get_xlabel(), ax.get_ylabel(),
                              len(ax.get_lines())))
        return real_savefig(fig, path, *a, **kw)

    monkeypatch.setattr(Figure, "savefig", checking_savefig)
    out = tmp_path / "plots"
    assert cli.main(["--no-compilation-cache", "demo", "--only", "modeling", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert not re.search(r"np\.(float|int)|Array\(|dtype=", text), text
    lines = text.splitlines()
    # every compile-heavy step is announced on its own line before its result
    announce = [i for i, line in enumerate(lines) if line.rstrip().endswith("...")]
    assert len(announce) >= 3
    assert lines.index(next(line for line in lines if line.startswith("assess("))) > announce[1]
    png = out / "modeling.png"
    assert png.is_file()
    assert f"wrote {png}" in text
    assert re.search(r"1 files? written to", text) and f"  {png}" in lines
    assert saved and all(x and y for _, _, x, y, _ in saved), saved
    regression_axes = [s for s in saved if s[1].startswith("regression")]
    assert regression_axes and regression_axes[0][4] >= 20  # the prior lines


def test_demo_time_is_printed_once_per_section():
    """Sections do not print their own total time; the command prints it once."""
    import inspect

    from inference.demo import SECTIONS

    for name in SECTIONS:
        src = inspect.getsource(__import__(f"inference.demo.{name}", fromlist=["run"]))
        assert "finished in" not in src and "done in" not in src, name


def test_bench_help_and_registry(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "--quick" in text and "--only" in text and "--results" in text
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(cli.__file__)))
    for name, bench in cli.BENCHMARKS.items():
        mod_file = os.path.join(root, *bench.module.split(".")) + ".py"
        assert os.path.isfile(mod_file), (name, mod_file)
        assert bench.call in ("argv", "prog_argv", "none")
        assert "def main(" in open(mod_file).read()
        assert bench.about
    quick = [n for n, b in cli.BENCHMARKS.items() if b.quick is not None]
    assert quick and set(quick) < set(cli.BENCHMARKS)
    assert importlib.util.find_spec("benchmarks") is not None or os.path.isdir(os.path.join(root, "benchmarks"))


def test_bench_unknown_name(capsys):
    assert cli.main(["--no-compilation-cache", "bench", "--only", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "'nosuch'" in err and "core" in err


def test_console_script_version():
    out = subprocess.run([sys.executable, "-c", "import sys; from inference.cli import main; sys.exit(main())",
                          "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and ppl.__version__ in out.stdout


def test_demo_mcmc_exact_references_match_brute_force_quadrature():
    """The exact posteriors the MCMC section compares with (a noise grid for the regression,
    enumeration over tau for the changepoint) agree with plain quadrature over every latent."""
    import numpy as np
    from scipy import stats

    from inference.demo import mcmc as demo

    counts = np.array([3, 4, 1, 0, 1])
    means, dens = demo.exact_changepoint(counts)
    g = np.linspace(1e-4, 15.0, 601)
    prior = stats.gamma.logpdf(g, demo.GAMMA_A, scale=1 / demo.GAMMA_B)
    joint = []
    for tau in range(len(counts)):
        ll_e = stats.poisson.logpmf(counts[:tau, None], g[None]).sum(0)
        ll_l = stats.poisson.logpmf(counts[tau:, None], g[None]).sum(0)
        joint.append((prior + ll_e)[:, None] + (prior + ll_l)[None, :])
    joint = np.exp(np.array(joint) - np.max(joint))
    joint /= joint.sum()
    assert abs(means["tau"] - (joint.sum((1, 2)) * np.arange(len(counts))).sum()) < 1e-3
    assert abs(means["early"] - (joint.sum((0, 2)) * g).sum()) < 1e-3
    assert abs(means["late"] - (joint.sum((0, 1)) * g).sum()) < 1e-3
    assert abs(dens["tau"].sum() - 1) < 1e-9

    xs, ys = np.linspace(-1, 1, 6), np.array([-1.2, -0.9, -0.1, 0.2, 0.9, 1.4])
    means, dens = demo.exact_regression(xs, ys)
    b = np.linspace(-2.0, 4.0, 121)
    s = np.linspace(1e-3, 2.0, 120)
    S, A, N = np.meshgrid(b, b, s, indexing="ij", sparse=True)  # slope, intercept, noise
    resid2 = sum((y - S * x - A) ** 2 for x, y in zip(xs, ys))
    logp = (-0.5 * (S**2 + A**2) / demo.PRIOR_SD**2 - 0.5 * (N / demo.NOISE_SCALE) ** 2
            - len(xs) * np.log(N) - 0.5 * resid2 / N**2)
    w = np.exp(logp - logp.max())
    w /= w.sum()
    for name, grid in (("slope", S), ("intercept", A), ("noise", N)):
        assert abs(means[name] - (w * grid).sum()) < 5e-3, (name, means[name], (w * grid).sum())
    assert abs(np.trapezoid(dens["slope"](b), b) - 1) < 1e-3
