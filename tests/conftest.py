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
