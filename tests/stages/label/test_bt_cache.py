"""The BT ensemble's labels come from the label cache when its training inputs are unchanged.

The ensemble trains on every human-labelled pair of its selection, so a pair's label depends on
all the others and it cannot be cached per pair; it is cached per run, keyed by its content key
and its training inputs (every pair to label: id, label source, source, fold). These tests run
the real pipeline on real HH pairs with a stand-in embedder (deterministic vectors from the
text's hash) that counts what it is asked to embed: a rerun with the same inputs must embed
nothing and publish the same labels; one more human pair must retrain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import curation.stages.label.stage as label_stage
from curation.models.base import ModelBackend
from curation.run.runner import curate
from curation.stages.label import build_labeler
from curation.stages.label.base import BackendPool
from curation.stages.label.bt_ensemble import BTEnsemble
from curation.stages.label.cache import LabelCache, RunCache, cache_root, open_cache
from curation.stages.label.config import BTEnsembleConfig
from curation.store.query import sql
from tests.helpers import LABEL_PAIRS_SCHEMA, first_hh_pairs, labeler_pair, recipe_config


class HashEmbedder(ModelBackend):
    """Unit vectors seeded by each text's sha256; ``texts`` lists every text it was asked for."""

    name = "sentence_transformers"
    model = "hash-embedder"

    def __init__(self) -> None:
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.texts += list(texts)
        out = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "big")
            v = np.random.default_rng(seed).standard_normal(16)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)


@pytest.fixture
def embedder(monkeypatch: pytest.MonkeyPatch) -> HashEmbedder:
    fake = HashEmbedder()
    monkeypatch.setattr(label_stage, "BackendPool", lambda root: BackendPool(root, build=lambda cfg, r: fake))
    return fake


def _cfg(tmp: Path, hh_path: Path, limit: int, **bt: Any):
    labeler = {"name": "bt", "kind": "bt_ensemble", "members": 3, **bt}
    sources = [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": limit}]
    return recipe_config(tmp, sources, dataset="bt", label={"labelers": [labeler]})


def test_a_rerun_with_the_same_inputs_reuses_the_labels_without_embedding(tmp_path: Path, hh_path: Path, embedder: HashEmbedder) -> None:
    def run(limit: int = 60, **bt: Any) -> dict:
        embedder.texts = []
        counts = curate(_cfg(tmp_path, hh_path, limit, **bt), force=True).funnel["labels"]["labelers"]
        return counts[bt.get("name", "bt")]

    first = run()
    kept = first["pairs"]
    assert (first["labels_reused"], first["labels_scored"]) == (0, kept) and embedder.texts
    cached = sorted(cache_root(tmp_path / "root").glob("*/run-*.parquet"))
    assert len(cached) == 1 and not list(cache_root(tmp_path / "root").glob("*/.*.tmp"))

    again = run()
    assert (again["labels_reused"], again["labels_scored"]) == (kept, 0)
    assert embedder.texts == []  # neither embedded nor trained
    table = 'SELECT * EXCLUDE (config) FROM "bt@{}".labels ORDER BY pair_id, labeler'
    assert sql(table.format(1), tmp_path / "root").equals(sql(table.format(2), tmp_path / "root"))  # identical to the trained run
    assert again["rows"] == first["rows"] and again["verdicts"] == first["verdicts"]

    renamed = run(name="bt-renamed")  # a name chooses no label
    assert renamed["labels_reused"] == kept and embedder.texts == []
    assert sql("SELECT DISTINCT labeler_group FROM labels", tmp_path / "root").rows() == [("bt-renamed",)]

    more = run(limit=61)  # one more human pair: every member's training data changed
    assert more["pairs"] == kept + 1
    assert (more["labels_reused"], more["labels_scored"]) == (0, kept + 1) and len(set(embedder.texts)) > 2

    reseeded = run(seed=1)  # another fold assignment: another content key
    assert (reseeded["labels_reused"], reseeded["labels_scored"]) == (0, kept) and embedder.texts
    assert len(list(cache_root(tmp_path / "root").glob("*/run-*.parquet"))) == 3


# --------------------------------------------------------------------------- the key


@pytest.fixture(scope="module")
def pairs(hh_path: Path) -> list[dict[str, Any]]:
    rows = first_hh_pairs(hh_path, 40)
    for r in rows[30:]:
        r["label_source"] = "unlabeled"
    return rows


def _bt(tmp_path: Path, **cfg: Any) -> BTEnsemble:
    fake = HashEmbedder()
    labeler = build_labeler(BTEnsembleConfig(name="bt", members=3, **cfg), BackendPool(tmp_path, build=lambda c, r: fake))
    assert isinstance(labeler, BTEnsemble)
    return labeler


def _path(tmp_path: Path, rows: list[dict[str, Any]], **cfg: Any) -> Path:
    cache = open_cache(tmp_path, _bt(tmp_path, **cfg))
    assert isinstance(cache, RunCache)
    return cache.path(pa.Table.from_pylist(rows, schema=LABEL_PAIRS_SCHEMA))


def test_the_run_key_follows_every_training_input(tmp_path: Path, pairs: list[dict[str, Any]]) -> None:
    assert not isinstance(open_cache(cache_root(tmp_path), _bt(tmp_path)), LabelCache)  # never cached per pair
    base = _path(tmp_path, pairs)
    assert _path(tmp_path, pairs[::-1]) == base  # the order of the pairs labels nothing differently

    flipped = [labeler_pair(p["prompt"], p["rejected"], p["chosen"]) if i == 3 else p for i, p in enumerate(pairs)]
    unlabeled = [{**p, "label_source": "unlabeled"} if i == 3 else p for i, p in enumerate(pairs)]
    other_source = [{**p, "source_dataset": "elsewhere"} if i == 3 else p for i, p in enumerate(pairs)]
    changed = [
        _path(tmp_path, flipped),  # a human label reversed
        _path(tmp_path, unlabeled),  # a human pair no longer trained on
        _path(tmp_path, other_source),  # per-source members: another training group
        _path(tmp_path, pairs[:-1]),  # one pair fewer to label
        _path(tmp_path, pairs, seed=7),  # other folds
        _path(tmp_path, pairs, l2=1.0),  # another head
        _path(tmp_path, pairs, embedder={"backend": "sentence_transformers", "model": "other-model"}),
    ]
    assert base not in changed and len(set(changed)) == len(changed)


def test_a_pair_that_gets_a_human_label_retrains(tmp_path: Path, pairs: list[dict[str, Any]]) -> None:
    """The same pairs, one of them now human-labelled (a label arrived from the annotation
    inbox): the set of pairs to label is unchanged, the training data is not."""
    import pyarrow.parquet as pq

    from curation.progress import NoProgress
    from curation.stages.label.config import LabelConfig
    from schemas import arrow_schema

    fake = HashEmbedder()
    label_cfg = LabelConfig(labelers=[BTEnsembleConfig(name="bt", members=3)])

    def run(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], pa.Table]:
        path = tmp_path / "pairs.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=LABEL_PAIRS_SCHEMA), path)
        labeler = build_labeler(label_cfg.labelers[0], BackendPool(tmp_path, build=lambda c, r: fake))
        out = tmp_path / "labels.parquet"
        fake.texts = []
        with pq.ParquetWriter(out, arrow_schema("labels")) as writer:
            counts = label_stage.run_labeler(labeler, label_cfg, [str(path)], writer, NoProgress(), open_cache(tmp_path / "c", labeler))
        return counts, pq.read_table(out)

    first, labels = run(pairs)
    assert (first["labels_reused"], first["labels_scored"]) == (0, len(pairs)) and fake.texts
    again, same = run(pairs)
    assert (again["labels_reused"], again["labels_scored"]) == (len(pairs), 0) and fake.texts == []
    assert same.drop_columns(["config"]).equals(labels.drop_columns(["config"]))

    one_more_human = [{**p, "label_source": "human"} if i == len(pairs) - 1 else p for i, p in enumerate(pairs)]
    retrained, new = run(one_more_human)
    assert (retrained["labels_reused"], retrained["labels_scored"]) == (0, len(pairs)) and fake.texts
    assert new.num_rows < labels.num_rows  # the new human pair gets held-out votes only, not every member's
