"""The Tbps-scale CDN simulator (issue 15): capacity planning with the edge's own cache code.

``python -m headwater.bench simulate --scenario prime-peak`` generates a scenario's viewers
(``workload.py``), keeps a SHARDS sample of the key space (``shards.py``), runs it through POP
RAM -> POP disk -> regional -> shield -> origin, each an instance of the edge's eviction policy
keyed by the edge's cache keys (``tiers.py``, ``engine.py``), and prints the planner's figures
(``report.py``); ``--sweep`` runs grids locally or on Dask (``sweep.py``), ``--plot`` draws
them (``plot.py``), ``--trace`` replays a libCacheSim trace (``trace.py``). See docs/simulate.md.
"""

from .cli import main

__all__ = ["main"]
