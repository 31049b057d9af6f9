"""Every docstring example and every ``python`` code block in docs/ runs."""

import doctest
import importlib
import pathlib
import pkgutil
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODULES = []
for pkg_name in ("ppl", "inference"):
    pkg = importlib.import_module(pkg_name)
    MODULES.append(pkg_name)
    for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + "."):
        if ".demo." in info.name:
            continue
        MODULES.append(info.name)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for t in finder.find(module, name):
        runner.run(t)
    assert runner.failures == 0, f"{runner.failures} doctest failures in {name} (see output)"


DOCS = sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_docs_code_blocks(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = {"__name__": f"docs_{path.stem}"}
    for i, block in enumerate(BLOCK.findall(path.read_text())):
        try:
            exec(compile(block, f"{path.name}[block {i}]", "exec"), ns)
        except Exception as e:  # pragma: no cover - reported with context
            raise AssertionError(f"{path.name} code block {i} failed: {e!r}\n{block}") from e
