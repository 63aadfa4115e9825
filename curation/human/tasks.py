"""Export routed pairs as annotation tasks: Label Studio, Argilla, or plain Parquet / CSV.

Position bias: people (like judges) favour one slot, so which response is shown as A is drawn
per pair from a seeded hash of its id, not always the chosen one. The task records it as
``a_is`` ("chosen" | "rejected", in the pair's stored orientation) where annotators do not see
it (Label Studio: a data key the labeling config never displays; Argilla: a metadata property
hidden from annotators; Parquet / CSV: a column), and ``read_completed`` maps answers back
through it. The same seed gives the same assignment, so a re-export shows the same layout.

Files written into ``out_dir`` (fixed names, overwritten):

* ``label_studio``: ``label_studio_tasks.json`` (import into a project) and
  ``label_studio_config.xml`` (its labeling interface: a Choices control ``preference``);
* ``argilla``: ``argilla_records.json`` (records as ``Dataset.records.log`` takes them; the
  record id is the pair id) and ``argilla_settings.json`` (``rg.Settings.from_json``: fields
  prompt / response_a / response_b, a LabelQuestion ``preference`` with labels A, B, tie);
* ``parquet`` / ``csv``: ``queue.parquet`` / ``queue.csv`` with empty ``preference``,
  ``annotator`` and ``annotated_at`` columns to fill in.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import polars as pl

from curation.records import render_conversation, response_text

FORMATS = ("label_studio", "argilla", "parquet", "csv")
TASK_COLUMNS = ["pair_id", "prompt", "response_a", "response_b", "a_is", "source_dataset"]
ANSWER_COLUMNS = ["preference", "annotator", "annotated_at"]
LABELS = ("A", "B", "tie")

LABEL_STUDIO_CONFIG = """<View>
  <Header value="Which response is better?"/>
  <Text name="prompt" value="$prompt"/>
  <View style="display: grid; grid-template-columns: 1fr 1fr; column-gap: 1em">
    <View>
      <Header value="Response A"/>
      <Text name="response_a" value="$response_a"/>
    </View>
    <View>
      <Header value="Response B"/>
      <Text name="response_b" value="$response_b"/>
    </View>
  </View>
  <Choices name="preference" toName="prompt" choice="single" required="true" showInline="true">
    <Choice value="A"/>
    <Choice value="B"/>
    <Choice value="Tie"/>
  </Choices>
</View>
"""

GUIDELINES = "Read the conversation and the two responses. Choose the better response (A or B), or tie when neither is clearly better."


def a_is(pair_id: str, seed: int) -> str:
    """Which stored response is shown as A: "chosen" or "rejected", from a seeded hash."""
    digest = hashlib.blake2b(f"{seed}\x00position\x00{pair_id}".encode(), digest_size=8).digest()
    return "chosen" if digest[0] & 1 == 0 else "rejected"


def task_rows(pairs: pl.DataFrame, seed: int) -> list[dict[str, Any]]:
    """One task per pair: the texts, which response is A, the source."""
    rows = []
    for p in pairs.select("pair_id", "prompt", "chosen", "rejected", "source_dataset").iter_rows(named=True):
        side = a_is(p["pair_id"], seed)
        chosen, rejected = response_text(p["chosen"]), response_text(p["rejected"])
        a, b = (chosen, rejected) if side == "chosen" else (rejected, chosen)
        rows.append(
            {
                "pair_id": p["pair_id"],
                "prompt": render_conversation(p["prompt"] or []),
                "response_a": a,
                "response_b": b,
                "a_is": side,
                "source_dataset": p["source_dataset"],
            }
        )
    return rows


def label_studio_tasks(pairs: pl.DataFrame, seed: int) -> list[dict[str, Any]]:
    """Label Studio tasks (``{"id", "data"}``), as imported into a project: the data keys the
    labeling config shows, plus ``pair_id`` and ``a_is``, which it does not."""
    return [{"id": i + 1, "data": row} for i, row in enumerate(task_rows(pairs, seed))]


def argilla_settings() -> dict[str, Any]:
    """The dataset settings as ``rg.Settings.serialize()`` writes them (so ``from_json`` reads them)."""

    def text_field(name: str, title: str) -> dict[str, Any]:
        return {"name": name, "title": title, "required": True, "description": None, "settings": {"type": "text", "use_markdown": False}}

    def hidden_terms(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "type": "terms",
            "title": name,
            "visible_for_annotators": False,
            "settings": {"type": "terms", "values": None},
        }

    return {
        "guidelines": GUIDELINES,
        "questions": [
            {
                "name": "preference",
                "title": "Which response is better?",
                "description": None,
                "required": True,
                "settings": {"type": "label_selection", "options": [{"value": v, "text": v} for v in LABELS], "visible_options": None},
            }
        ],
        "fields": [text_field("prompt", "Conversation"), text_field("response_a", "Response A"), text_field("response_b", "Response B")],
        "vectors": [],
        "metadata": [hidden_terms("pair_id"), hidden_terms("a_is"), hidden_terms("source_dataset")],
        "allow_extra_metadata": False,
        "distribution": {"strategy": "overlap", "min_submitted": 1},
        "mapping": None,
    }


def _write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def export_queue(
    routed_pairs: pl.DataFrame, out_dir: str | Path, formats: list[str] | tuple[str, ...] = FORMATS, seed: int = 0
) -> dict[str, Path]:
    """Write the routed pairs (pairs-table columns: pair_id, prompt, chosen, rejected,
    source_dataset) as annotation tasks; returns format -> file (plus ``label_studio_config``
    and ``argilla_settings`` for the files written beside the tasks)."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown queue format(s) {unknown}; known: {', '.join(FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = task_rows(routed_pairs, seed)
    written: dict[str, Path] = {}
    if "label_studio" in formats:
        tasks = [{"id": i + 1, "data": row} for i, row in enumerate(rows)]  # as label_studio_tasks
        written["label_studio"] = _write_json(out / "label_studio_tasks.json", tasks)
        written["label_studio_config"] = out / "label_studio_config.xml"
        written["label_studio_config"].write_text(LABEL_STUDIO_CONFIG, encoding="utf-8")
    if "argilla" in formats:
        records = [
            {
                "id": r["pair_id"],
                "fields": {"prompt": r["prompt"], "response_a": r["response_a"], "response_b": r["response_b"]},
                "metadata": {"pair_id": r["pair_id"], "a_is": r["a_is"], "source_dataset": r["source_dataset"]},
            }
            for r in rows
        ]
        written["argilla"] = _write_json(out / "argilla_records.json", records)
        written["argilla_settings"] = _write_json(out / "argilla_settings.json", argilla_settings())
    if "parquet" in formats or "csv" in formats:
        table = pl.DataFrame(rows, schema={c: pl.String for c in TASK_COLUMNS}).with_columns(
            pl.lit(None, pl.String).alias("preference"),
            pl.lit(None, pl.String).alias("annotator"),
            pl.lit(None, pl.String).alias("annotated_at"),
        )
        if "parquet" in formats:
            written["parquet"] = out / "queue.parquet"
            table.write_parquet(written["parquet"])
        if "csv" in formats:
            written["csv"] = out / "queue.csv"
            table.write_csv(written["csv"])
    return written
