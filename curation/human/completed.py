"""Read completed human annotations and merge them into the pairs table.

``read_completed(path)`` accepts what annotation tools export for the tasks ``queue`` wrote:

* Label Studio's JSON export: a list of tasks ``{"data": {...pair_id, a_is...}, "annotations":
  [{"result": [{"from_name": "preference", "type": "choices", "value": {"choices": ["A"]}}],
  "completed_by": 3 | {"id", "email"}, "created_at", "updated_at", "was_cancelled"}]}``;
  cancelled (skipped) annotations are ignored.
* Argilla v2 records, nested as ``dataset.records.to_json`` writes them (``{"id", "fields",
  "metadata", "responses": {"preference": [{"value": "A", "user_id": ...}]}, "status"}``) or
  flat as ``dataset.records.to_list(flatten=True)`` gives them (metadata keys at the top level,
  ``"preference.responses"``, ``"preference.responses.users"``, ``"preference.responses.status"``).
  Responses whose status is ``draft`` or ``discarded`` are ignored.
* Rows (CSV, Parquet, JSONL, or a JSON list such as Label Studio's JSON-MIN export) with
  ``pair_id``, ``preference`` (A | B | tie, which needs ``a_is``; or chosen | rejected | tie)
  and optionally ``a_is``, ``annotator``, ``annotated_at`` (``updated_at`` / ``created_at`` are
  read too). Rows with an empty preference are not answered yet and are skipped.

Every answer is mapped to the pair's stored orientation through ``a_is``: "chosen" means the
person agreed with the pair as stored. Bad rows stop the import with one ``CurationError``
listing every problem by file, row (0-based, the position in the file's list of records) and
field, so a person fixes the file once rather than once per run.

``merge(pairs, human)`` applies the majority of each pair's annotators (one vote per annotator,
their latest; equal top counts -> tie): chosen -> the pair becomes human-labelled; rejected ->
chosen and rejected are swapped, which makes a new pair id (content ids); tie -> the pair is
dropped. Merging the same labels again changes nothing: the pair's metadata records the human
label (annotators, preference, the pair id as labelled), so an applied label is recognised,
also on a pair the earlier import flipped (found by the id it was labelled under).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from curation.decisions import decisions_frame
from curation.errors import CurationError
from curation.records import content_ids

PREFERENCES = ("chosen", "rejected", "tie")
QUESTION = "preference"
HUMAN_SCHEMA = {
    "pair_id": pl.String,
    "preference": pl.String,
    "annotator": pl.String,
    "annotated_at": pl.Datetime("us", "UTC"),
    "source_file": pl.String,
    "source_row": pl.Int64,
}
MAX_LISTED = 20  # problems listed in the error message (the count is always given)
OTHER = {"chosen": "rejected", "rejected": "chosen", "tie": "tie"}


class _Problems:
    def __init__(self, path: Path):
        self.path, self.items = path, []

    def add(self, row: int | None, field: str | None, message: str) -> None:
        where = ", ".join(p for p in (f"row {row}" if row is not None else None, f"field {field!r}" if field else None) if p)
        self.items.append(f"{self.path}: {where}: {message}" if where else f"{self.path}: {message}")

    def raise_any(self) -> None:
        if self.items:
            listed = "\n  ".join(self.items[:MAX_LISTED])
            more = f"\n  ... and {len(self.items) - MAX_LISTED} more" if len(self.items) > MAX_LISTED else ""
            raise CurationError(f"{len(self.items)} problem(s) in completed annotations {self.path} (rows are 0-based):\n  {listed}{more}")


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _timestamp(value: Any, row: int, field: str, problems: _Problems) -> datetime | None:
    if _blank(value):
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            pass
        else:
            return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    problems.add(row, field, f"{value!r} is not an ISO 8601 timestamp")
    return None


def _annotator(value: Any) -> str | None:
    if isinstance(value, dict):  # Label Studio's completed_by with user details
        value = value.get("email") or value.get("id")
    return None if _blank(value) else str(value).strip()


def _preference(value: Any, a_is: Any, row: int, problems: _Problems, a_is_field: str) -> str | None:
    """The answer in the pair's stored orientation, None when unanswered or bad."""
    if isinstance(value, list):  # Label Studio choices / a one-element list
        if len(value) != 1:
            if value:
                problems.add(row, QUESTION, f"{value!r}: expected a single choice")
            return None
        value = value[0]
    if _blank(value):
        return None
    answer = str(value).strip().lower()
    if answer in PREFERENCES:
        return answer
    if answer not in ("a", "b"):
        problems.add(row, QUESTION, f"{value!r} is not a preference; expected A, B or tie (or chosen, rejected, tie)")
        return None
    if a_is not in ("chosen", "rejected"):
        problems.add(row, a_is_field, f"{a_is!r}: an answer A/B needs a_is = chosen or rejected (which response was shown as A)")
        return None
    return a_is if answer == "a" else OTHER[a_is]


def _vote(
    rows: list[dict], problems: _Problems, row: int, pair_id: Any, a_is: Any, value: Any, annotator: Any, at: Any, prefix: str = ""
) -> None:
    """Check one answer and append it as a vote row; unanswered ones are skipped, and every
    problem of the row is reported (not only the first)."""
    before = len(problems.items)
    if not _blank(a_is) and a_is not in ("chosen", "rejected"):
        problems.add(row, f"{prefix}a_is", f"{a_is!r}: expected chosen or rejected")
        a_is = None
        preference = None
    else:
        preference = _preference(value, a_is, row, problems, f"{prefix}a_is")
    when = _timestamp(at, row, "annotated_at", problems)
    if (not isinstance(pair_id, str) or not pair_id.strip()) and not _blank(value):
        problems.add(row, f"{prefix}pair_id", f"{pair_id!r}: every answer needs the pair id it answers")
    if preference is not None and len(problems.items) == before:
        rows.append(
            {
                "pair_id": pair_id.strip(),
                "preference": preference,
                "annotator": _annotator(annotator),
                "annotated_at": when,
                "source_row": row,
            }
        )


def _label_studio(records: list[dict], problems: _Problems) -> list[dict]:
    rows: list[dict] = []
    for i, task in enumerate(records):
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        for ann in task.get("annotations") or []:
            if not isinstance(ann, dict) or ann.get("was_cancelled"):
                continue
            results = [r for r in ann.get("result") or [] if isinstance(r, dict) and r.get("from_name") == QUESTION]
            if not results:
                continue
            value = (results[0].get("value") or {}).get("choices")
            if value is None:
                problems.add(i, "annotations.result.value.choices", f"the {QUESTION!r} result has no choices")
                continue
            at = ann.get("updated_at") or ann.get("created_at")
            _vote(rows, problems, i, data.get("pair_id"), data.get("a_is"), value, ann.get("completed_by"), at, prefix="data.")
    return rows


def _argilla_nested(records: list[dict], problems: _Problems) -> list[dict]:
    rows: list[dict] = []
    for i, rec in enumerate(records):
        metadata = rec.get("metadata") or {}
        pair_id = metadata.get("pair_id") or rec.get("id")
        for resp in (rec.get("responses") or {}).get(QUESTION) or []:
            if not isinstance(resp, dict) or resp.get("status") in ("draft", "discarded"):
                continue
            at = resp.get("updated_at") or resp.get("inserted_at")
            _vote(rows, problems, i, pair_id, metadata.get("a_is"), resp.get("value"), resp.get("user_id"), at, prefix="metadata.")
    return rows


def _argilla_flat(records: list[dict], problems: _Problems) -> list[dict]:
    rows: list[dict] = []
    key = f"{QUESTION}.responses"
    for i, rec in enumerate(records):
        values = rec.get(key) or []
        users = rec.get(f"{key}.users") or [None] * len(values)
        statuses = rec.get(f"{key}.status") or [None] * len(values)
        if not (len(values) == len(users) == len(statuses)):
            problems.add(i, key, f"{len(values)} responses but {len(users)} users and {len(statuses)} statuses")
            continue
        for value, user, status in zip(values, users, statuses):
            if status in ("draft", "discarded"):
                continue
            _vote(rows, problems, i, rec.get("pair_id") or rec.get("id"), rec.get("a_is"), value, user, None)
    return rows


def _plain_rows(records: list[dict], problems: _Problems) -> list[dict]:
    columns = set().union(*(r.keys() for r in records)) if records else set()
    missing = [c for c in ("pair_id", QUESTION) if c not in columns]
    if records and missing:
        problems.add(None, None, f"no column {', '.join(map(repr, missing))} (columns: {', '.join(sorted(columns))})")
        return []
    rows: list[dict] = []
    for i, r in enumerate(records):
        at = next((r[k] for k in ("annotated_at", "updated_at", "created_at") if not _blank(r.get(k))), None)
        _vote(rows, problems, i, r.get("pair_id"), r.get("a_is"), r.get(QUESTION), r.get("annotator"), at)
    return rows


def _load(path: Path, problems: _Problems) -> list[Any]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pl.read_parquet(path).to_dicts()
    if suffix == ".csv":
        return pl.read_csv(path, infer_schema=False).to_dicts()  # all strings: ids stay as written
    text = path.read_text(encoding="utf-8")
    if suffix == ".jsonl":
        records = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    problems.add(i, None, f"not valid JSON ({err.msg})")
        return records
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CurationError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
        if not isinstance(data, list):
            raise CurationError(f"{path}: expected a JSON list of tasks or records, got {type(data).__name__}")
        return data
    raise CurationError(f"{path}: unknown file type {suffix!r}; expected .json (Label Studio, Argilla), .jsonl, .csv or .parquet")


def read_completed(path: str | Path) -> pl.DataFrame:
    """The human votes in a completed annotation file: one row per answer with ``pair_id`` (as
    exported), ``preference`` (chosen | rejected | tie, in the pair's stored orientation),
    ``annotator``, ``annotated_at`` (UTC, null when the tool gives none), ``source_file`` and
    ``source_row`` (0-based). Raises ``CurationError`` listing every bad row."""
    path = Path(path)
    if not path.is_file():
        raise CurationError(f"completed annotations {path} not found")
    problems = _Problems(path)
    records = _load(path, problems)
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            problems.add(i, None, f"expected an object, got {type(r).__name__}")
    problems.raise_any()
    if any("annotations" in r for r in records):
        rows = _label_studio(records, problems)
    elif any(isinstance(r.get("responses"), dict) or isinstance(r.get("fields"), dict) for r in records):
        rows = _argilla_nested(records, problems)
    elif any(k.endswith(f"{QUESTION}.responses") for r in records for k in r):
        rows = _argilla_flat(records, problems)
    else:
        rows = _plain_rows(records, problems)
    problems.raise_any()
    return (
        pl.DataFrame([{**r, "source_file": str(path)} for r in rows], schema=HUMAN_SCHEMA, orient="row")
        if rows
        else pl.DataFrame(schema=HUMAN_SCHEMA)
    )


# --------------------------------------------------------------------------- merge


CONSENSUS_SCHEMA = {
    "pair_id": pl.String,
    "preference": pl.String,
    "annotators": pl.List(pl.String),
    "annotated_at": pl.Datetime("us", "UTC"),
    "votes": pl.String,
}


def consensus(human: pl.DataFrame) -> pl.DataFrame:
    """Per labelled pair id: the majority ``preference`` (equal top counts -> tie), the
    ``annotators`` (sorted), the latest ``annotated_at`` and the vote counts. Each annotator
    counts once, with their latest answer; answers without an annotator each count."""
    if human.is_empty():
        return pl.DataFrame(schema=CONSENSUS_SCHEMA)
    latest = (
        human.with_row_index("_order")
        .sort(["annotated_at", "_order"], nulls_last=False)
        .with_columns(
            pl.when(pl.col("annotator").is_null()).then(pl.format("#{}", pl.col("_order"))).otherwise(pl.col("annotator")).alias("_who")
        )
        .unique(["pair_id", "_who"], keep="last", maintain_order=True)
        .sort("_order")
    )
    out = []
    for (pid,), group in latest.group_by("pair_id", maintain_order=True):
        counts = Counter(group["preference"].to_list())
        top = max(counts.values())
        winners = [p for p in PREFERENCES if counts.get(p) == top]
        out.append(
            {
                "pair_id": pid,
                "preference": winners[0] if len(winners) == 1 else "tie",
                "annotators": sorted(a for a in group["annotator"].to_list() if a is not None),
                "annotated_at": group["annotated_at"].max(),
                "votes": json.dumps({p: counts.get(p, 0) for p in PREFERENCES}),
            }
        )
    return pl.DataFrame(out, schema=CONSENSUS_SCHEMA)


def _metadata(value: str | None) -> dict[str, Any]:
    if value is None:
        return {}
    parsed = json.loads(value)
    return parsed if isinstance(parsed, dict) else {"metadata": parsed}


def _applied(row: dict[str, Any], labelled_id: str, c: dict[str, Any]) -> bool:
    """This pair already carries exactly this human label."""
    mark = _metadata(row.get("metadata")).get("human_label") or {}
    return (
        row.get("label_source") == "human"
        and mark.get("labeled_pair_id") == labelled_id
        and mark.get("annotators") == c["annotators"]
        and mark.get("preference") == c["preference"]
    )


def merge(pairs: pl.DataFrame, human: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Apply human labels (``read_completed`` rows, several files concatenated) to ``pairs``
    (pairs-table rows). Returns ``(pairs_out, decisions, human_rows)``:

    * ``pairs_out``: the pairs in their order, labelled pairs updated (label_source human,
      label_model null, metadata ``human_label``), flipped pairs swapped under their new id,
      tied pairs removed;
    * ``decisions``: one row per pair changed, by its id before the merge: ``kept`` (the human
      agreed), ``flipped`` / ``human_label`` (matched_pair_id = the new id), ``filtered`` /
      ``human_tie``; a flip onto an id that already exists is ``filtered`` /
      ``duplicate_after_flip`` matching that pair. Pairs already carrying the label: no row;
    * ``human_rows``: the votes with ``majority`` (the pair's merged preference), ``outcome``
      (kept | flipped | tie | duplicate | already_applied | unknown_pair) and ``imported_pair_id``
      (the pair's id after the merge; null when it was dropped or is unknown). Unknown pair
      ids are counted there, not an error: a queue may hold pairs a later run removed.
    """
    agreed = consensus(human)
    ids = pairs["pair_id"].to_list()
    by_id = {pid: i for i, pid in enumerate(ids)}
    by_labelled: dict[str, int] = {}
    if "metadata" in pairs.columns:
        for i, meta in enumerate(pairs["metadata"].to_list()):
            mark = _metadata(meta).get("human_label") if meta else None
            if isinstance(mark, dict) and isinstance(mark.get("labeled_pair_id"), str):
                by_labelled[mark["labeled_pair_id"]] = i
    updates: dict[int, dict[str, Any]] = {}
    dropped: set[int] = set()
    decided: list[tuple[str, str, str | None, str | None]] = []
    outcome: dict[str, tuple[str, str | None]] = {}

    for c in agreed.iter_rows(named=True):
        labelled = c["pair_id"]
        i = by_id.get(labelled, by_labelled.get(labelled))
        if i is None or i in dropped:
            outcome[labelled] = ("unknown_pair", None)
            continue
        row = updates.get(i) or pairs.row(i, named=True)
        if _applied(row, labelled, c):
            outcome[labelled] = ("already_applied", row["pair_id"])
            continue
        # the answer is relative to the pair as labelled; this row may be that pair flipped
        preference = c["preference"] if row["pair_id"] == labelled else OTHER[c["preference"]]
        meta = _metadata(row.get("metadata"))
        meta["human_label"] = {
            "annotators": c["annotators"],
            "annotated_at": c["annotated_at"].isoformat() if c["annotated_at"] else None,
            "preference": c["preference"],
            "votes": json.loads(c["votes"]),
            "labeled_pair_id": labelled,
            "previous": {"label_source": row.get("label_source"), "label_model": row.get("label_model")},
        }
        old = row["pair_id"]
        if preference == "tie":
            dropped.add(i)
            decided.append((old, "filtered", "human_tie", None))
            outcome[labelled] = ("tie", None)
            continue
        new = {**row, "label_source": "human", "label_model": None, "metadata": json.dumps(meta, ensure_ascii=False)}
        if preference == "chosen":
            updates[i] = new
            decided.append((old, "kept", None, None))
            outcome[labelled] = ("kept", old)
            continue
        new.update(chosen=row["rejected"], rejected=row["chosen"])
        if "chosen_score" in row and "rejected_score" in row:
            new.update(chosen_score=row["rejected_score"], rejected_score=row["chosen_score"])
        if row.get("preference_strength") is not None:
            new["preference_strength"] = -row["preference_strength"]
        new["prompt_id"], new["pair_id"] = content_ids(row["prompt"], new["chosen"], new["rejected"])
        clash = by_id.get(new["pair_id"])
        if clash is not None and clash != i and clash not in dropped:
            dropped.add(i)
            decided.append((old, "filtered", "duplicate_after_flip", new["pair_id"]))
            outcome[labelled] = ("duplicate", None)
            continue
        updates[i] = new
        by_id[new["pair_id"]] = i
        decided.append((old, "flipped", "human_label", new["pair_id"]))
        outcome[labelled] = ("flipped", new["pair_id"])

    if updates:
        changed = pl.DataFrame([updates[i] for i in sorted(updates)], schema=pairs.schema, orient="row")
        keep = pl.Series([i not in updates for i in range(pairs.height)])
        order = pl.concat([pl.Series("_i", range(pairs.height)).filter(keep), pl.Series("_i", sorted(updates))])
        pairs_out = pl.concat([pairs.filter(keep), changed]).with_columns(order.alias("_i")).sort("_i").drop("_i")
    else:
        pairs_out = pairs
    if dropped:
        pairs_out = pairs_out.filter(pl.Series([i not in dropped for i in range(pairs.height)]))
    decisions = decisions_frame([d[0] for d in decided], [d[1] for d in decided], [d[2] for d in decided], matched=[d[3] for d in decided])
    majority = dict(zip(agreed["pair_id"].to_list(), agreed["preference"].to_list()))
    human_rows = human.with_columns(
        pl.col("pair_id").replace_strict(majority, default=None, return_dtype=pl.String).alias("majority"),
        pl.col("pair_id").replace_strict({k: v[0] for k, v in outcome.items()}, default=None, return_dtype=pl.String).alias("outcome"),
        pl.col("pair_id")
        .replace_strict({k: v[1] for k, v in outcome.items()}, default=None, return_dtype=pl.String)
        .alias("imported_pair_id"),
    )
    return pairs_out, decisions, human_rows


def unknown_count(human_rows: pl.DataFrame) -> int:
    """Labelled pair ids ``merge`` did not find (the count to report)."""
    return human_rows.filter(pl.col("outcome") == "unknown_pair")["pair_id"].n_unique()
