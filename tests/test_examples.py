"""The examples gallery (docs/examples, registry inference.examples, command `ppl examples`):
every example runs at its small size, writes its plot and passes its own check against an exact
or reference answer (each example raises AssertionError when off).

Except eight schools, the examples whose small size still compiles NUTS, PMMH or training programs (20-35 s of CPU each on a
loaded 2-core machine) run only with PPL_FULL_STATS=1, so that this file stays near a minute;
the same algorithms on the same kinds of models are checked by tests/test_posteriordb.py (eight
schools), tests/test_branch_semantics.py (outlier Gibbs), tests/test_enum.py (mixture NUTS) and
tests/test_smc_pmmh.py; tests/test_vi.py trains with vi.iwelbo.
"""

import os

import pytest

from inference import examples
from inference.cli import main as cli_main

FULL = os.environ.get("PPL_FULL_STATS") == "1"
# eight schools (half_cauchy + deterministic + NUTS + az.loo) always runs: it is the acceptance
# check of the NumPyro-style modeling tools
HEAVY = {"curve_fitting", "stochastic_volatility", "gaussian_mixture", "vae_digits"}


@pytest.mark.parametrize("name", examples.names())
def test_example_runs_and_matches_its_reference(name, tmp_path):
    if name in HEAVY and not FULL:
        pytest.skip(f"example {name} compiles NUTS/PMMH programs: run with PPL_FULL_STATS=1")
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
