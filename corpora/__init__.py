"""Seeded, self-made corpora for tests and benchmarks (no outside data).

Everything lives in ``corpora.generate``::

    from corpora.generate import GENERATORS, generate, write_all
    python -m corpora.generate OUTDIR

(Nothing is imported here, so that ``python -m corpora.generate`` runs the
module once and the submodule name ``generate`` is not shadowed by the function.)
"""
