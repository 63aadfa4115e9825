"""The contract every proxy trainer keeps.

A trainer is given training pairs and evaluation pairs (rows of the ``pairs`` table as Arrow:
``pair_id``, ``prompt``, ``chosen``, ``rejected`` message lists; chosen is the label's
preferred response) and returns, per evaluation pair, the trained model's *margin*: how much
more it prefers the chosen response than the rejected one (> 0: it agrees with the label).
Accuracy, intervals and comparisons are computed from margins by ``curation.evaluate.stats``,
the same way for every trainer, so trainers differ only in how they learn a preference.

Pure: no Prefect, no files beyond the scratch folder it is given and model caches; a
notebook can call ``fit_margins`` on any two tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import pyarrow as pa

from curation.progress import Progress


class Trainer(Protocol):
    kind: ClassVar[str]

    def fit_margins(self, train: pa.Table, evaluate: pa.Table, *, seed: int, work_dir: Path, progress: Progress) -> np.ndarray:
        """Train on ``train`` (seeded), then the margin of every ``evaluate`` pair, in order."""
        ...
