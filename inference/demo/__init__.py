"""The ``ppl demo`` tour: one module per inference family, each exposing ``run(out_dir, key)``.

Sections are listed in ``SECTIONS`` in tour order; a section whose module is missing is skipped.
"""

SECTIONS = ["modeling", "smc", "mcmc", "vi"]
