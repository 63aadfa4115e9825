"""Proxy models measured on held-out human preferences (curation/evaluate), on real HH-RLHF pairs.

The product's central promise: a version with noisy labels measures worse than a clean one on
the same evaluation pairs, with a paired interval that says so; evaluation prompts seen in
training are left out and counted; an evaluation set nothing can be measured on is an error.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curation.errors import CurationError
from curation.evaluate.config import EvaluateConfig, LeakageConfig
from curation.evaluate.leakage import leaked
from curation.evaluate.measure import compare, evaluation_pairs, measure
from curation.records import PairDraft, pair_id, prompt_id
from tests.helpers import hh_drafts

SCHEMA_COLUMNS = ("pair_id", "prompt_id", "prompt", "chosen", "rejected", "label_source")


def pairs_table(drafts: list, *, flip: set[int] = frozenset(), label_source: str = "human") -> pa.Table:
    rows = []
    for i, d in enumerate(drafts):
        chosen, rejected = (d.rejected, d.chosen) if i in flip else (d.chosen, d.rejected)
        rows.append(
            {
                "pair_id": pair_id(d.prompt, chosen, rejected),
                "prompt_id": prompt_id(d.prompt),
                "prompt": d.prompt,
                "chosen": chosen,
                "rejected": rejected,
                "label_source": label_source,
            }
        )
    return pa.Table.from_pylist(rows)


@pytest.fixture(scope="module")
def split(hh_path: Path) -> tuple[list, list]:
    """Real HH pairs split by prompt id: 80% to train on, 20% to evaluate on."""
    seen: set[str] = set()
    train, evaluate = [], []
    for d in hh_drafts(hh_path):
        pid = prompt_id(d.prompt)
        if pid in seen:
            continue
        seen.add(pid)
        (evaluate if int(pid[:8], 16) % 5 == 0 else train).append(d)
    return train, evaluate


@pytest.fixture(scope="module")
def pandalm_split(shared_data: Path) -> tuple[list, list]:
    """Real PandaLM pairs (the three annotators' majority, ties and splits left out), split by
    prompt id: 3/4 to train on, 1/4 to evaluate on. On HH-RLHF harmless a frozen-embedding head
    reaches ~61% and 230 evaluation pairs cannot tell 40% noise apart reliably; PandaLM's
    preferences are easier to learn from response embeddings."""
    rows = json.loads((shared_data / "pandalm-testset" / "testset-v1.json").read_text())
    train, evaluate = [], []
    for r in rows:
        ((vote, count),) = Counter([r["annotator1"], r["annotator2"], r["annotator3"]]).most_common(1)
        if count < 2 or vote == 0:
            continue
        prompt = [{"role": "user", "content": f"{r['instruction']}\n{r['input']}".strip()}]
        one, two = [{"role": "assistant", "content": str(r["response1"])}], [{"role": "assistant", "content": str(r["response2"])}]
        d = PairDraft(prompt, one if vote == 1 else two, two if vote == 1 else one)
        (evaluate if int(prompt_id(prompt)[:8], 16) % 4 == 0 else train).append(d)
    return train, evaluate


def test_forty_percent_flipped_labels_measure_clearly_worse_on_the_same_pairs(pandalm_split: tuple[list, list], tmp_path: Path) -> None:
    train, evaluate = pandalm_split
    flipped = set(random.Random(0).sample(range(len(train)), int(0.4 * len(train))))
    cfg = EvaluateConfig(holdout_fraction=0.2, bootstrap=1000)
    ev, leaked_out = evaluation_pairs(pairs_table(evaluate), [pairs_table(train)], cfg)
    assert ev.num_rows >= 150
    made: dict = {}  # both variants share the embeddings of the same texts
    base = {"evaluation_id": "t", "dataset": "t", "version": None, "eval_set": "t", "leaked_excluded": leaked_out}
    common = dict(work_root=str(tmp_path), base=base, made=made)
    clean = measure("clean", pairs_table(train), ev, cfg, work_dir=tmp_path / "clean", **common)
    noisy = measure("noisy", pairs_table(train, flip=flipped), ev, cfg, work_dir=tmp_path / "noisy", with_baselines=False, **common)
    compare(noisy, "clean", clean, cfg.bootstrap)
    acc = {m.rows[0]["variant"]: m.rows[0]["accuracy"] for m in (clean, noisy)}
    row = noisy.rows[0]
    assert noisy.pair_ids == clean.pair_ids  # the same pairs, in the same order
    baselines = {r["trainer"]: r["accuracy"] for r in clean.rows if r["trainer"].startswith("baseline:")}
    assert set(baselines) == {"baseline:random", "baseline:longer_wins", "baseline:shorter_wins"}
    assert acc["clean"] > baselines["baseline:random"] + 0.1, (acc, baselines)  # it learned something
    assert row["difference_high"] < 0, row  # the whole paired interval is below zero: clearly worse
    assert row["difference"] == pytest.approx(acc["noisy"] - acc["clean"])
    assert row["reference"] == "clean"


def test_the_leakage_guard_removes_a_planted_prompt_and_counts_it(split: tuple[list, list]) -> None:
    train, evaluate = split
    ev = pairs_table(evaluate[:60])
    planted = evaluate[7]
    # the same question in training, re-cased and with an extra closing sentence: a different prompt id
    text = planted.prompt[0]["content"]
    copy = dataclasses.replace(planted, prompt=[{"role": "user", "content": text.upper() + " Thanks a lot."}, *planted.prompt[1:]])
    tr = pairs_table(train[:300] + [copy])
    assert prompt_id(copy.prompt) != prompt_id(planted.prompt)
    cfg = LeakageConfig()
    mask = leaked(tr, ev, cfg)
    assert mask[7] and mask.sum() == 1 + int(leaked(pairs_table(train[:300]), ev, cfg).sum())
    kept, out = evaluation_pairs(ev, [tr], EvaluateConfig(holdout_fraction=0.1))
    assert out == int(mask.sum()) and kept.num_rows == ev.num_rows - out
    assert planted.prompt[0]["content"] not in {p[0]["content"] for p in kept.column("prompt").to_pylist()}


def test_an_evaluation_set_with_no_human_label_or_all_leaked_is_an_error(split: tuple[list, list]) -> None:
    train, evaluate = split
    cfg = EvaluateConfig(holdout_fraction=0.1)
    with pytest.raises(CurationError, match="no human-labelled pair"):
        evaluation_pairs(pairs_table(evaluate[:20], label_source="ai"), [pairs_table(train[:50])], cfg)
    with pytest.raises(CurationError, match="all 20 evaluation pairs have their prompt in the training pairs"):
        evaluation_pairs(pairs_table(evaluate[:20]), [pairs_table(train[:50] + evaluate[:20])], cfg)


def test_a_trainer_returning_nan_is_refused(split: tuple[list, list], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from curation.evaluate.trainers import bt_embed

    monkeypatch.setattr(bt_embed.BtEmbedTrainer, "fit_margins", lambda self, train, ev, **kw: np.full(ev.num_rows, np.nan))
    train, evaluate = split
    with pytest.raises(CurationError, match="margins"):
        measure("x", pairs_table(train[:20]), pairs_table(evaluate[:10]), EvaluateConfig(holdout_fraction=0.1), work_dir=tmp_path,
                work_root=str(tmp_path), base={})  # fmt: skip
