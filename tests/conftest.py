import os

# Several CPU devices for sharding tests; must be set before JAX initializes.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)


import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Free JAX's compiled programs and traces after each test module: the suite compiles
    thousands of programs, and keeping all of them alive grows one process to many GiB."""
    yield
    jax.clear_caches()
    gc.collect()


# Modules holding the suite's longest tests (a 2-worker run's --durations: single tests of 30-300 s
# on a loaded machine), collected first, heaviest first. pytest-xdist's worksteal hands each worker
# a contiguous half of the collection and steals from the end of a queue, so with the long tests in
# front the run ends on short tests rather than one worker finishing a long test while the other
# idles. A stable sort: every module's tests stay together (the fixture above clears the compiled
# programs once per module) and in file order; the other modules follow in their usual order.
SLOW_FIRST = [
    "test_amortized.py", "test_posteriordb.py", "test_mcmc_stats.py", "test_branch_semantics.py",
    "test_kill_resume.py", "test_mcmc_guarantees.py", "test_docs.py", "test_autoguide.py",
    "test_examples.py", "test_involutive.py", "test_distributed.py", "test_cache.py", "test_adev.py",
]


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
