"""Hybrid human-AI routing: score AI-labelled pairs for how much a human label would help,
export the top ones as annotation tasks, and merge the completed human labels back.

* ``features``: per-pair routing features from the labels table and the pair texts;
* ``router``: the ``route`` filter step (``run``), its routing table and ``fit_weights``;
* ``queue``: export routed pairs for Label Studio, Argilla, or as Parquet / CSV;
* ``human_labels``: read completed annotations (``read_completed``) and ``merge`` them.
"""

from __future__ import annotations

from curation.route.features import FEATURES, features
from curation.route.human_labels import merge, read_completed
from curation.route.queue import export_queue
from curation.route.router import DEFAULT_WEIGHTS, fit_weights, routing_table

__all__ = ["DEFAULT_WEIGHTS", "FEATURES", "export_queue", "features", "fit_weights", "merge", "read_completed", "routing_table"]
