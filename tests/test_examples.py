"""The examples gallery (docs/examples, registry inference.examples, command `ppl examples`):
every example runs at its small size, writes its plot and passes its own check against an exact
or reference answer (each example raises AssertionError when off). All of them run by default
(issue 15): at the small size each compiles as few programs as it can (one NUTS/HMC/PMMH or
training program, chains vmapped in it, evaluations jitted together), so each costs ~10-20 s of CPU,
most of it compiling.
"""

import os

import pytest

from inference import examples
from inference.cli import main as cli_main

# the examples whose small size compiles NUTS, PMMH or training programs (the slowest ones)
HEAVY = {"curve_fitting", "stochastic_volatility", "gaussian_mixture", "vae_digits"}


@pytest.mark.parametrize("name", examples.names())
def test_example_runs_and_matches_its_reference(name, tmp_path):
    out = examples.run(name, small=True, out_dir=str(tmp_path))
    pngs = [f for f in os.listdir(tmp_path) if f.endswith(".png")]
    assert len(pngs) == 1 and os.path.getsize(tmp_path / pngs[0]) > 1000
    assert isinstance(out, dict)


def test_every_example_script_is_registered_and_documented():
    assert HEAVY <= set(examples.names()) and "eight_schools" in examples.names()
    scripts = {f for f in os.listdir(examples.EXAMPLES_DIR) if f.endswith(".py")}
    assert scripts == {examples.path(n).name for n in examples.names()}
    readme = (examples.EXAMPLES_DIR / "README.md").read_text()
    for n in examples.names():
        assert examples.path(n).name in readme
        assert examples.load(n).__doc__.strip()


def test_cli_lists_examples_and_rejects_unknown(capsys):
    assert cli_main(["--no-compilation-cache", "examples"]) == 0
    listed = capsys.readouterr().out
    assert all(n in listed for n in examples.names())
    assert cli_main(["--no-compilation-cache", "examples", "nosuch"]) == 2
    assert "unknown example 'nosuch'" in capsys.readouterr().err
