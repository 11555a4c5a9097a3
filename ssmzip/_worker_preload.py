"""Imported by the fork server before it forks workers (see parallel.py): loads
the engine's compiled kernel once, so every worker starts with it in memory
instead of spending half a second loading it from numba's cache."""
from .engine import warm_up

warm_up()
