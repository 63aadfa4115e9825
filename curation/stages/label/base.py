"""What every labeler shares: the pair view it reads, the label row it writes, its base class.

A labeler reads pairs (``pair_id``, ``prompt``, ``chosen``, ``rejected``, ``label_source``) and
returns one labels row per pair it could label (see ``schemas/labels.yaml``). Slot A is the
pair's stored ``chosen`` response and slot B its ``rejected`` one, whatever the source said, so
that for human-labelled pairs "verdict A" means "agrees with the human". Labelers never see or
change the pair's own label; the stage writes their rows into a separate table.

The core never imports Prefect: a notebook builds a labeler with ``build_labeler`` and calls
``label(pairs_table)``.
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pyarrow as pa

from curation.errors import ConfigError
from curation.models.base import Conversation, ModelBackend, Unsupported
from curation.models.config import BackendConfig
from curation.records import response_text
from schemas import arrow_schema

VERDICTS = ("A", "B", "tie", "invalid")
# The pairs-table columns the label stage reads for its labelers (not the filter steps'
# ``STEP_PAIR_COLUMNS``): what ``pair_views`` needs, plus ``source_dataset`` for per-source limits.
LABELER_PAIR_COLUMNS = ["pair_id", "prompt", "chosen", "rejected", "label_source", "source_dataset"]


@dataclass(frozen=True)
class PairView:
    """One pair as labelers see it: the prompt conversation and the two response texts."""

    pair_id: str
    prompt: Conversation
    response_a: str  # the pair's chosen response
    response_b: str  # the pair's rejected response
    label_source: str


def pair_views(pairs: pa.Table) -> list[PairView]:
    cols = {name: pairs.column(name).to_pylist() for name in ("pair_id", "prompt", "chosen", "rejected", "label_source")}
    return [
        PairView(
            pair_id=cols["pair_id"][i],
            prompt=[{"role": m["role"], "content": m["content"]} for m in cols["prompt"][i]],
            response_a=response_text(cols["chosen"][i]),
            response_b=response_text(cols["rejected"][i]),
            label_source=cols["label_source"][i],
        )
        for i in range(pairs.num_rows)
    ]


def verdict_from_margin(margin: float | None, tie_tolerance: float = 0.0) -> str:
    if margin is None or (isinstance(margin, float) and math.isnan(margin)):
        return "invalid"
    if abs(margin) <= tie_tolerance:
        return "tie"
    return "A" if margin > 0 else "B"


Item = TypeVar("Item")
Result = TypeVar("Result")


def scoring_failure(err: Exception) -> str:
    return f"scoring failed: {type(err).__name__}: {err}"


def isolate_failures(items: Sequence[Item], score: Callable[[Sequence[Item]], list[Result]]) -> list[Result | str]:
    """``score(items)`` (one result per item) in one call when it succeeds; when it raises, each
    item is scored on its own and a failing item's result is its error text, so one bad pair
    (longer than the context, a template that rejects its turns) costs only itself.

    Fatal rather than per-item: a ``ConfigError`` always; ``Unsupported`` only when it hits
    every item, because then the backend lacks the capability (some backends also report a
    single request's rejection as ``Unsupported``, which stays that item's error)."""
    if not items:
        return []
    try:
        return list(score(items))
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - any backend failure: find the item(s) that caused it
        if len(items) == 1:
            if isinstance(err, Unsupported):
                raise
            return [scoring_failure(err)]
    out: list[Result | str] = []
    unsupported: list[Unsupported] = []
    for item in items:
        try:
            out.extend(score([item]))
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - recorded as this item's error, never a score
            if isinstance(err, Unsupported):
                unsupported.append(err)
            out.append(scoring_failure(err))
    if len(unsupported) == len(items):
        raise unsupported[0]
    return out


def config_hash(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Labeler(ABC):
    """Base of every labeler. Subclasses set ``kind`` and implement ``label``.

    ``streaming`` labelers label any batch of pairs independently (the stage feeds them
    chunks); the others (an ensemble trained on the data) need every pair at once.
    """

    kind: ClassVar[str]
    streaming: ClassVar[bool] = True

    def __init__(self, cfg: Any, backends: BackendPool):
        self.cfg = cfg
        self.backends = backends

    @property
    def name(self) -> str:
        return self.cfg.name

    @classmethod
    def check(cls, cfg: Any, data_root: str | Path) -> None:
        """Raise ``ConfigError`` for a config that cannot work, before any model loads
        (the backends' own checks included)."""
        return None

    def models(self) -> list[str]:
        """Model ids recorded on every row."""
        return []

    def config_dict(self) -> dict[str, Any]:
        return self.cfg.model_dump(mode="json", by_alias=True)

    @cached_property
    def _provenance(self) -> tuple[str, str, list[str]]:
        """(config JSON, config hash, model ids): the same on every row, so computed once."""
        config = self.config_dict()
        return json.dumps(config, sort_keys=True), config_hash(config), self.models()

    @abstractmethod
    def label(self, pairs: pa.Table) -> pa.Table:
        """Labels rows (``schemas/labels.yaml``) for ``pairs`` (columns ``LABELER_PAIR_COLUMNS``)."""

    def row(
        self,
        pair_id: str,
        score_a: float | None,
        score_b: float | None,
        *,
        verdict: str | None = None,
        confidence: float | None = None,
        consistent: bool | None = None,
        details: dict[str, Any] | None = None,
        raw: Any = None,
        error: str | None = None,
        labeler: str | None = None,
    ) -> dict[str, Any]:
        """One labels row. Without an explicit verdict it follows the margin; a missing
        score makes the row invalid (never a default score)."""
        valid = score_a is not None and score_b is not None and not any(math.isnan(s) for s in (score_a, score_b))
        margin = (score_a - score_b) if valid else None
        if verdict is None:
            verdict = verdict_from_margin(margin)
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
        if verdict == "invalid" and error is None:
            error = "no score"
        config_json, hashed, models = self._provenance
        return {
            "pair_id": pair_id,
            "labeler": labeler or self.name,
            "labeler_group": self.name,
            "kind": self.kind,
            "score_a": score_a if valid else None,
            "score_b": score_b if valid else None,
            "margin": margin,
            "verdict": verdict,
            "confidence": confidence,
            "consistent": consistent,
            "details": json.dumps(details, ensure_ascii=False, default=float) if details else None,
            "raw": json.dumps(raw, ensure_ascii=False) if raw is not None else None,
            "error": error,
            "models": models,
            "config": config_json,
            "config_hash": hashed,
        }

    @staticmethod
    def table(rows: list[dict[str, Any]]) -> pa.Table:
        return pa.Table.from_pylist(rows, schema=arrow_schema("labels"))


class BackendPool:
    """Backends shared by the labelers of one run: two labelers configured with the same
    model and settings load it once. ``get`` builds on first use; ``close`` frees all."""

    def __init__(self, data_root: str | Path, build: Callable[[BackendConfig, str | Path], ModelBackend] | None = None):
        from curation.models import build_backend

        self.data_root = data_root
        self._build = build or build_backend
        self._backends: dict[str, ModelBackend] = {}

    def get(self, cfg: BackendConfig) -> ModelBackend:
        key = cfg.model_dump_json()
        if key not in self._backends:
            self._backends[key] = self._build(cfg, self.data_root)
        return self._backends[key]

    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()
