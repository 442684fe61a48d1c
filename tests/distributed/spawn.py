"""Run a function on W CPU ranks from inside pytest: engine.runtime.launch.run_local.

    results = run_ranks(fn, world_size=2, args=(...,), timeout_s=240)   # fn(rank, *args) -> picklable
"""
from engine.runtime.launch import run_local as run_ranks  # noqa: F401
