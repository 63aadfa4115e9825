"""CHES on real HH-RLHF pairs with the real SmolLM2 (the policy's last-layer hidden states).

What CHES claims: two responses that the policy represents alike score high (likelihood
displacement risk), unrelated ones low. The module checks that on real prompts with a
near-identical rejected response (the chosen with one word changed) against an unrelated real
response from another row, then runs the step itself. Only short single-turn pairs are used
so the forward passes (~50 sequences on one thread) keep the file near half a minute.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from curation.errors import ConfigError
from curation.models import BackendConfig, PooledHidden
from curation.models.transformers_backend import TransformersBackend
from curation.records import response_text
from curation.stages.filter.base import FramePairs, StepContext
from curation.stages.filter.ches import check, ches_scores, n_to_drop, run
from curation.stages.filter.config import ChesStep
from curation.stages.label.base import BackendPool
from tests.helpers import LABEL_PAIRS_SCHEMA, first_hh_pairs

pytestmark = pytest.mark.usefixtures("torch_threads")  # tests/model_fixtures.py

SMOLLM2 = BackendConfig(backend="transformers", model="smollm2", batch_size=8)
HH = "hh-rlhf-harmless-base"
N = 6  # prompts for the similarity checks; the step runs on the first 7 pairs


# ------------------------------------------------------------------ pure core


def test_formula_matches_a_hand_computation() -> None:
    s_plus = np.array([[1.0, 2.0], [3.0, -1.0], [1.0, 1.0]])
    s_minus = np.array([[3.0, 0.0], [3.0, -1.0], [5.0, 5.0]])
    ches, ln = ches_scores(s_plus, s_minus, [2, 4, 0], [3, 4, 6])
    # <S+,S-> = 3, 10 ; ||S+||^2 = 5, 10 ; LN: 3/(2*3) - 5/2^2, 10/16 - 10/16
    np.testing.assert_allclose(ches[:2], [3 - 5, 0.0])
    np.testing.assert_allclose(ln[:2], [0.5 - 1.25, 0.0])
    assert np.isnan(ches[2]) and np.isnan(ln[2])  # an empty response: nothing was measured
    # float64 even from float32 sums whose squares float32 would round
    big = np.full((1, 4), 30001.0, dtype=np.float32)  # <S+,S-> ~ 3.6e9: float32 would be off by hundreds
    assert ches_scores(big, big + np.float32(1), [1], [1])[0][0] == 4 * 30001.0
    with pytest.raises(ValueError, match="token counts"):
        ches_scores(s_plus, s_minus, [1, 2], [1, 2, 3])


def test_drop_count_rounds_down() -> None:
    assert [n_to_drop(0.1, 5), n_to_drop(0.1, 10), n_to_drop(0.29, 100), n_to_drop(0.95, 20), n_to_drop(1.0, 7), n_to_drop(0.0, 7)] == [
        0,
        1,
        29,
        19,
        7,
        0,
    ]


def test_check_rejects_backends_without_hidden_states(models_root: Path) -> None:
    for kind in ("openai", "vllm"):
        cfg = ChesStep(backend=BackendConfig(backend=kind, model="my-policy", base_url="http://127.0.0.1:9/v1"))
        with pytest.raises(ConfigError) as err:
            check(cfg, models_root)
        message = str(err.value)
        assert f"backend {kind!r} cannot" in message and "hidden states" in message
        assert "backend: transformers" in message and "policy model" in message
    with pytest.raises(ConfigError, match="not available locally"):
        check(ChesStep(backend=BackendConfig(backend="transformers", model=str(models_root / "no-such-model"))), models_root)
    check(ChesStep(backend=SMOLLM2), models_root)  # the shipped SmolLM2 can


# ------------------------------------------------------------------ real model


def _short(draft: Any) -> bool:
    c, r = response_text(draft.chosen), response_text(draft.rejected)
    return len(draft.prompt) == 1 and len(draft.prompt[0]["content"]) < 200 and 60 < len(c) < 300 and 60 < len(r) < 300 and c != r


def _one_word_changed(text: str) -> str:
    """The text with its middle word of 4+ letters replaced, whitespace untouched."""
    words = list(re.finditer(r"\b[A-Za-z]{4,}\b", text))
    m = words[len(words) // 2]
    return text[: m.start()] + ("green" if m.group() != "green" else "blue") + text[m.end() :]


@pytest.fixture(scope="module")
def rows(hh_path: Path) -> list[dict[str, Any]]:
    return first_hh_pairs(hh_path, N + 1, _short)


@pytest.fixture(scope="module")
def pool(smollm2_dir: Path, models_root: Path) -> Iterator[BackendPool]:
    backends = BackendPool(models_root)
    yield backends
    backends.close()


@pytest.fixture(scope="module")
def lm(pool: BackendPool) -> TransformersBackend:
    backend = pool.get(SMOLLM2)
    assert isinstance(backend, TransformersBackend)
    return backend


@pytest.fixture(scope="module")
def pooled(rows: list[dict[str, Any]], lm: TransformersBackend) -> dict[str, list[PooledHidden]]:
    """Hidden states of N real prompts with: the chosen, the chosen with one word changed, another
    row's chosen (an unrelated real response), and the real rejected."""
    convs = [r["prompt"] for r in rows[:N]]
    chosen = [response_text(r["chosen"]) for r in rows[:N]]
    texts = {
        "chosen": chosen,
        "near": [_one_word_changed(c) for c in chosen],
        "unrelated": [chosen[(i + N // 2) % N] for i in range(N)],
        "rejected": [response_text(r["rejected"]) for r in rows[:N]],
    }
    flat = lm.hidden_states(convs * len(texts), [t for group in texts.values() for t in group])
    return {name: flat[k * N : (k + 1) * N] for k, name in enumerate(texts)}


def _scores(plus: list[PooledHidden], minus: list[PooledHidden]) -> tuple[np.ndarray, np.ndarray]:
    return ches_scores(
        np.stack([h.sum for h in plus]), np.stack([h.sum for h in minus]), [h.n_tokens for h in plus], [h.n_tokens for h in minus]
    )


def test_near_identical_responses_score_higher_than_unrelated(pooled: dict[str, list[PooledHidden]]) -> None:
    near_ches, near_ln = _scores(pooled["chosen"], pooled["near"])
    unrelated_ches, unrelated_ln = _scores(pooled["chosen"], pooled["unrelated"])
    assert (near_ln > unrelated_ln).all(), (near_ln, unrelated_ln)  # LN-CHES: on every prompt
    # Raw CHES = <S+, S- - S+> agrees where the unrelated response is no longer than the chosen ...
    ratio = np.array([u.n_tokens / c.n_tokens for u, c in zip(pooled["unrelated"], pooled["chosen"])])
    assert (ratio <= 1).any() and (near_ches[ratio <= 1] > unrelated_ches[ratio <= 1]).all(), (ratio, near_ches, unrelated_ches)
    # ... but grows with the rejected response's length: an unrelated response clearly longer than
    # the chosen scores above 0, one clearly shorter below. Hence ranking by LN-CHES by default.
    assert (ratio > 1.15).any() and (ratio < 0.85).any()  # both cases occur among these prompts
    assert (unrelated_ches[ratio > 1.15] > 0).all() and (unrelated_ches[ratio < 0.85] < 0).all(), (ratio, unrelated_ches)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def start(self, description: str, total: int | None = None) -> None:
        self.calls.append(("start", (description, total)))

    def advance(self, n: int = 1) -> None:
        self.calls.append(("advance", n))

    def finish(self) -> None:
        self.calls.append(("finish", None))


@pytest.fixture(scope="module")
def frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """The 7 real pairs: pair 2's rejected emptied, pairs 5 and 6 from another source."""
    table = pl.from_arrow(pa.Table.from_pylist(rows, schema=LABEL_PAIRS_SCHEMA))
    assert isinstance(table, pl.DataFrame)
    index = pl.int_range(pl.len())
    return table.with_columns(
        rejected=pl.when(index == 2).then(pl.lit([{"role": "assistant", "content": ""}])).otherwise(pl.col("rejected")),
        source_dataset=pl.when(index >= 5).then(pl.lit("other")).otherwise(pl.col("source_dataset")),
    )


def test_run_drops_the_top_ln_ches_of_the_selected_pairs(
    frame: pl.DataFrame, pool: BackendPool, pooled: dict[str, list[PooledHidden]]
) -> None:
    cfg = ChesStep(backend=SMOLLM2, sources=[HH], limit=4, drop_fraction=0.5, batch_size=3)
    progress = Recorder()
    result = run(cfg, FramePairs(frame), pl.DataFrame(), StepContext(backends=pool, progress=progress))
    result.check("ches")
    out = result.decisions
    ids = frame["pair_id"].to_list()
    assert out["pair_id"].to_list() == ids[:4]  # the first 4 of the source; other sources get no row
    assert result.scores == ["ches", "ln_ches"]

    # The empty rejected response cannot be scored: kept, no scores, counted.
    empty = out.row(2, named=True)
    assert (empty["decision"], empty["reason"], empty["ches"], empty["ln_ches"]) == ("kept", None, None, None)
    scored = out.filter(pl.col("ln_ches").is_not_null())
    assert scored.height == 3 and result.summary["unscored_empty_response"] == 1 and result.summary["scored"] == 3

    # Exactly int(0.5 * 3) = 1 dropped: the highest LN-CHES.
    dropped = out.filter(pl.col("decision") == "filtered")
    assert dropped.height == result.summary["dropped"] == 1
    assert dropped["reason"].to_list() == ["ches_displacement"]
    assert dropped["ln_ches"][0] == scored["ln_ches"].max() == result.summary["threshold"]
    assert result.summary["quantiles"]["ln_ches"]["max"] == pytest.approx(scored["ln_ches"].max())

    # The scores are those of the pairs' own hidden states (computed in another batch here).
    ches, ln = _scores(pooled["chosen"], pooled["rejected"])
    np.testing.assert_allclose(scored["ln_ches"].to_numpy(), ln[[0, 1, 3]], rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(scored["ches"].to_numpy(), ches[[0, 1, 3]], rtol=1e-3, atol=5.0)

    assert progress.calls[0] == ("start", ("filter: ches", 4)) and progress.calls[-1] == ("finish", None)
    assert sum(n for kind, n in progress.calls if kind == "advance") == 4


def test_run_raw_ches_with_a_per_source_limit(frame: pl.DataFrame, pool: BackendPool) -> None:
    cfg = ChesStep(backend=SMOLLM2, normalised=False, limit=2, drop_fraction=0.5)
    result = run(cfg, FramePairs(frame), pl.DataFrame(), StepContext(backends=pool))
    out = result.decisions
    ids = frame["pair_id"].to_list()
    assert out["pair_id"].to_list() == [ids[0], ids[1], ids[5], ids[6]]  # the first 2 of each source
    assert out["ches"].null_count() == 0 and result.summary["ranked_by"] == "ches"
    dropped = out.filter(pl.col("decision") == "filtered")
    kept = out.filter(pl.col("decision") == "kept")
    assert dropped.height == 2 and kept.height == 2  # int(0.5 * 4)
    assert dropped["ches"].min() > kept["ches"].max()
    assert result.summary["threshold"] == dropped["ches"].min()


def test_run_with_nothing_selected_loads_no_model(frame: pl.DataFrame) -> None:
    cfg = ChesStep(backend=SMOLLM2, sources=["no-such-source"])
    result = run(cfg, FramePairs(frame), pl.DataFrame(), StepContext(backends=None))
    assert result.decisions.height == 0 and result.summary["scored"] == 0 and result.summary["threshold"] is None
