"""Package layering: the modeling language ``ppl`` imports nothing from ``inference``, and the
plotting / data-loading dependencies (matplotlib, scikit-learn) are imported only by the demo code
that uses them. Each check runs in a fresh interpreter so earlier imports in the test session
cannot hide a violation."""

import subprocess
import sys

import pytest

HEAVY = ("matplotlib", "sklearn")


def _loaded_after(code: str, prefixes) -> list:
    """Run ``code`` in a new interpreter; return the loaded modules whose top-level name is in ``prefixes``."""
    probe = (
        f"{code}\n"
        "import sys\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {tuple(prefixes)!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return eval(out.stdout.strip().splitlines()[-1])


def test_ppl_does_not_import_inference():
    assert _loaded_after("import ppl", ("inference",)) == []


@pytest.mark.parametrize("code", [
    "import ppl, inference",
    "from inference import importance, smc, mcmc, vi",
    "import inference.cli",
])
def test_library_import_does_not_load_plotting_or_sklearn(code):
    assert _loaded_after(code, HEAVY) == []


def test_probe_detects_a_loaded_module():
    # the probe itself must be able to fail: a module imported by the code is reported
    assert "json" in _loaded_after("import json", ("json",))


def test_cli_is_in_inference_and_ppl_has_none():
    import importlib.util

    assert importlib.util.find_spec("ppl.cli") is None
    assert importlib.util.find_spec("inference.cli") is not None
