"""Row accounting catches every mismatch it promises to: in the counts, between the counts and
the staged files, for every stage; and a mismatch stops a run with nothing published.

Each case starts from a real run's stage outputs (the HH sample through ingest, validate and
dedup, plus generated and filtered outputs written here) that pass the check, then breaks one
thing: a count, or a staged file's rows.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from curation import spine
from curation.errors import CurationError
from curation.progress import NoProgress
from curation.run import accounting
from curation.run.runner import curate
from curation.stages.base import APPEND, REPLACE, StageOutput
from curation.store.catalog import DatasetStore
from curation.tables import TableWriter
from tests.helpers import hh, recipe_config, write_jsonl

ROWS = [hh([("user", f"Question {i}?")], f"Answer {i}.", f"No {i}.") for i in range(6)]
ROWS += [ROWS[0], {"chosen": "no markers"}, hh([("user", "Empty?")], "", "x")]  # a duplicate, a bad row, an empty reply


@pytest.fixture
def outs(tmp_path: Path) -> dict[str, StageOutput]:
    """Real ingest/validate/dedup outputs, and generate/filter outputs built to match them."""
    cfg = recipe_config(tmp_path, [{"name": "hh", "path": str(write_jsonl(tmp_path / "in.jsonl", ROWS)), "adapter": "hh_rlhf"}])
    work = tmp_path / "work"
    work.mkdir()
    out: dict[str, StageOutput] = {}
    for name in ("ingest", "validate", "dedup"):
        stage = spine.stage(name)
        out[name] = stage.run(cfg, work, {n: o for n, o in out.items() if n in stage.upstream}, NoProgress())
    kept = pq.read_table(out["dedup"].files["pairs"])
    generated = kept.slice(0, 2)
    files = {"candidates": work / "candidates.parquet", "pairs": work / "gen.parquet", "decisions": work / "gen-dec.parquet"}
    candidate = {"prompt_id": "p", "prompt": [], "response": "r", "strategy": "iid", "model": "m", "backend": "b", "params": "{}"}
    candidate |= {"seed": 0, "request": [], "finish_reason": "stop", "cache_key": "k"}
    with TableWriter(files["candidates"], "candidates") as w:
        for i in range(4):
            w.append({**candidate, "candidate_id": f"c{i}", "candidate_index": i})
    pq.write_table(generated, files["pairs"])
    with TableWriter(files["decisions"], "decisions") as w:
        for pid in generated["pair_id"].to_pylist() + ["dropped"]:
            decision = "kept" if pid != "dropped" else "filtered"
            w.append(
                {
                    "pair_id": pid,
                    "source_dataset": "generated",
                    "source_file": "g",
                    "source_row": 0,
                    "stage": "generate",
                    "decision": decision,
                }
            )
    counts = {"candidates": 4, "pairs_considered": 3, "pairs_kept": 2, "filtered": {"too_similar": 1}}
    out["generate"] = StageOutput("generate", {k: str(v) for k, v in files.items()}, counts, 0.0, publishes={"pairs": APPEND})
    survivors = kept.slice(0, kept.num_rows - 1)
    pq.write_table(survivors, work / "filtered.parquet")
    counts = {"pairs_in": kept.num_rows + 2, "pairs_out": survivors.num_rows, "filtered": 3}
    out["filter"] = StageOutput("filter", {"pairs": str(work / "filtered.parquet")}, counts, 0.0, publishes={"pairs": REPLACE})
    accounting.check(accounting.funnel(out), out)  # the unbroken outputs pass
    return out


def _count(stage: str, path: str, value: Any) -> Callable[[dict[str, StageOutput]], None]:
    def change(outs: dict[str, StageOutput]) -> None:
        counts = outs[stage].counts
        *parents, last = path.split(".")
        for p in parents:
            counts = counts[p]
        counts[last] = value(counts[last]) if callable(value) else value

    return change


def _drop_a_row(stage: str, table: str) -> Callable[[dict[str, StageOutput]], None]:
    def change(outs: dict[str, StageOutput]) -> None:
        path = outs[stage].files[table]
        if path.endswith(".arrow"):  # the staged ingest pairs: rewrite as Arrow IPC without the last row
            import pyarrow as pa
            import pyarrow.ipc as ipc

            with pa.OSFile(path) as f:
                t = ipc.open_file(f).read_all()
            with ipc.new_file(path, t.schema) as w:
                w.write_table(t.slice(0, t.num_rows - 1))
        else:
            t = pq.read_table(path)
            pq.write_table(t.slice(0, max(t.num_rows - 1, 0)), path)

    return change


BREAKS = {
    "a source's rows": (_count("ingest", "sources.hh.rows_with_pairs", lambda n: n - 1), "source hh: 9 rows in but 8 accounted for"),
    "rows in": (_count("ingest", "rows_in", lambda n: n + 1), "rows in != quarantined + filtered + rows with pairs"),
    "pairs produced": (_count("ingest", "pairs_out", lambda n: n + 1), "pairs produced != "),
    "ingested pairs file": (_drop_a_row("ingest", "pairs"), "ingested pairs: 7 rows staged, 8 counted"),
    "read/adapt quarantine file": (_drop_a_row("ingest", "quarantine"), "read/adapt quarantine: 0 rows staged, 1 counted"),
    "validate count": (_count("validate", "quarantined.empty_response", lambda n: n + 1), "pairs produced != "),
    "validate quarantine file": (_drop_a_row("validate", "quarantine"), "validate quarantine: 0 rows staged, 1 counted"),
    "dedup count": (_count("dedup", "kept", lambda n: n - 1), "pairs produced != "),
    "dedup decisions file": (_drop_a_row("dedup", "decisions"), "dedup decisions: 6 rows staged, 7 counted"),
    "kept pairs file": (_drop_a_row("dedup", "pairs"), "kept pairs: 5 rows staged, 6 counted"),
    "generated count": (_count("generate", "pairs_kept", 1), "generated: 3 pairs considered != 1 kept"),
    "candidates file": (_drop_a_row("generate", "candidates"), "candidates: 3 rows staged, 4 counted"),
    "generated pairs file": (_drop_a_row("generate", "pairs"), "generated pairs: 1 rows staged, 2 counted"),
    "generate decisions file": (_drop_a_row("generate", "decisions"), "generate decisions: 2 rows staged, 3 counted"),
    "filter input": (_count("filter", "pairs_in", lambda n: n + 1), "filter: 9 pairs in, but 8 were kept and generated"),
    "filter output": (_count("filter", "filtered", lambda n: n + 1), "filter: 8 pairs in != 5 out + 4 filtered"),
    "filtered pairs file": (_drop_a_row("filter", "pairs"), "filtered pairs: 4 rows staged, 5 counted"),
}


@pytest.mark.parametrize("what", list(BREAKS))
def test_every_mismatch_stops_the_check_and_names_itself(outs: dict[str, StageOutput], what: str) -> None:
    change, message = BREAKS[what]
    broken = copy.deepcopy(outs)
    change(broken)
    with pytest.raises(CurationError, match="row accounting failed, nothing was published") as err:
        accounting.check(accounting.funnel(broken), broken)
    assert message in str(err.value)


def test_a_mismatch_in_a_run_publishes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage that under-counts (a bug) stops ``curate``: no dataset, no version."""
    cfg = recipe_config(tmp_path, [{"name": "hh", "path": str(write_jsonl(tmp_path / "in.jsonl", ROWS)), "adapter": "hh_rlhf"}])
    dedup = spine.stage("dedup")
    real = type(dedup).run

    def miscounting(self: Any, *args: Any, **kwargs: Any) -> StageOutput:
        out = real(self, *args, **kwargs)
        out.counts["kept"] -= 1
        return out

    monkeypatch.setattr(type(dedup), "run", miscounting)
    with pytest.raises(CurationError, match="row accounting failed") as err:
        curate(cfg)
    assert "kept pairs: 6 rows staged, 5 counted" in str(err.value)
    assert DatasetStore(cfg.data_root).datasets() == []
    monkeypatch.undo()
    result = curate(cfg)  # the same inputs, counted right, publish
    assert result.version == 1 and json.loads(json.dumps(result.funnel))["kept"] == 6
