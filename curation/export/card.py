"""The Hugging Face dataset card (``README.md``) of a TRL export: the curation's evidence.

``dataset_card`` is pure: it turns what a published version recorded (``VersionInfo``: the
recipe, its hash, the code version, the funnel counts) and what the export wrote
(``ExportResult``) into the card's text. It reads no file and no table. ``card_evidence``
gathers what the card needs from the store besides the version's metadata (decontamination
counts from the ``decisions`` table, evaluation rows from the version's ``evaluations`` table
and the dataset's evaluation log), and ``write_card`` puts the card in the export folder.

The card has two parts:

* YAML front matter that the Hub and ``datasets`` read: ``license``, ``pretty_name``,
  ``task_categories``, ``tags``, ``size_categories`` (the Hub's buckets, from the exported
  row count), ``configs`` (each split's data file, the Parquet files when the export wrote
  them, else the JSONL, else the saved ``DatasetDict``'s Arrow files), and ``dataset_info``
  with each split's size. ``datasets.load_dataset(FOLDER)`` reads the folder by these
  ``configs`` and checks the split sizes against ``dataset_info``.
* A body for people: the version and its identity, the recipe, the funnel (rows in,
  quarantined, filtered by stage and reason, kept, published), label agreement with the human
  labels, decontamination per benchmark, and the evaluations, each only from recorded numbers;
  a section with nothing recorded says so.

Every count is read with ``.get``: a version published before a key existed still gets a card.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from curation.report.labels import AGREEMENT_HEADER, AGREEMENT_NOTE, agreement_rows

if TYPE_CHECKING:
    from curation.export.trl import ExportResult
    from curation.store.catalog import DatasetStore, VersionInfo

SPLITS = ("train", "test")
DECONTAMINATE = "decontaminate"
# The Hub's size_categories buckets (huggingface.co/docs/hub/datasets-cards), by upper bound.
SIZE_BUCKETS = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
    (10_000_000_000, "1B<n<10B"),
    (100_000_000_000, "10B<n<100B"),
    (1_000_000_000_000, "100B<n<1T"),
)
NO_LICENCE = "other"
CARD = "README.md"


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n`` rows."""
    for bound, name in SIZE_BUCKETS:
        if n < bound:
            return name
    return "n>1T"


def data_files(export: ExportResult) -> list[dict[str, str]]:
    """``[{split, path}]`` for the card's ``configs``: the files of each split the export wrote,
    relative to its folder. Parquet when written, else JSONL, else the ``hf/`` Arrow shards. A
    split with no rows is left out (``datasets`` cannot build a split from an empty file list)."""
    out = Path(export.out_dir)
    written = {Path(f).resolve().relative_to(out.resolve()).as_posix() for f in export.files}
    entries = []
    for split in SPLITS:
        if not export.counts.get(split):
            continue
        for candidate in (f"{split}.parquet", f"{split}.jsonl"):
            if candidate in written:
                entries.append({"split": split, "path": candidate})
                break
        else:
            if any(p.startswith(f"hf/{split}/") and p.endswith(".arrow") for p in written):
                entries.append({"split": split, "path": f"hf/{split}/*.arrow"})
    return entries


def default_licence(config: Mapping[str, Any]) -> str | None:
    """The licence the recipe's sources declare, when they all declare the same one (a source
    entry's ``license``/``licence``, top level or in its ``options``); else None."""
    found = set()
    for src in config.get("sources") or []:
        if not isinstance(src, Mapping):
            return None
        opts = src.get("options") if isinstance(src.get("options"), Mapping) else {}
        value = src.get("license") or src.get("licence") or opts.get("license") or opts.get("licence")
        if not value:
            return None
        found.add(str(value))
    return found.pop() if len(found) == 1 else None


def front_matter(info: VersionInfo, export: ExportResult, licence: str, num_bytes: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The card's YAML metadata, as a dict. ``datasets`` reads ``dataset_info.splits`` only when
    every split has ``num_bytes`` (its size as Arrow data, ``split_bytes``); without them the
    splits carry ``num_examples`` alone, for people and the Hub."""
    files = data_files(export)
    splits = [e["split"] for e in files]
    return {
        "license": licence,
        "pretty_name": f"{info.dataset} v{info.version}",
        "task_categories": ["text-generation"],
        "tags": ["dpo", "preference", "curated"],
        "size_categories": [size_category(sum(export.counts.get(s, 0) for s in SPLITS))],
        "configs": [{"config_name": "default", "data_files": files}],
        "dataset_info": {
            "splits": [
                {
                    "name": s,
                    **({"num_bytes": int(num_bytes[s])} if num_bytes and s in num_bytes else {}),
                    "num_examples": int(export.counts[s]),
                }
                for s in splits
            ]
        },
    }


def dataset_card(
    info: VersionInfo,
    *,
    export: ExportResult,
    config: Mapping[str, Any],
    funnel: Mapping[str, Any],
    evaluations: Sequence[Mapping[str, Any]],
    licence: str | None = None,
    decontamination: Mapping[str, Mapping[str, Mapping[str, int]]] | None = None,
    export_info: Mapping[str, Any] | None = None,
    num_bytes: Mapping[str, int] | None = None,
) -> str:
    """README.md text for the export of ``info`` (see the module docstring).

    ``config`` is the version's stored recipe, ``funnel`` its counts, ``evaluations`` rows of
    the ``evaluations`` schema. ``licence``: an id from the Hub's list (default: what the
    sources declare, else ``other``). ``decontamination``: ``{step: {benchmark: {reason: n}}}``
    of the pairs each decontaminate step filtered (``decontamination_counts``); None when
    nobody looked. ``export_info``: the export's ``export_info.json`` (seed, split rule).
    ``num_bytes``: each split's size as Arrow data (``split_bytes``).
    """
    declared = default_licence(config)
    licence = licence or declared or NO_LICENCE
    meta = front_matter(info, export, licence, num_bytes)
    head = "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000) + "---\n"
    parts = [
        _intro(info, export, export_info or {}),
        _recipe(config),
        _funnel(funnel, info, export),
        _agreement(funnel),
        _decontamination(config, funnel, decontamination),
        _evaluation(evaluations),
        _licence(licence, declared, config),
        _use(info),
    ]
    return head + "\n" + "\n".join(p for p in parts if p)


# --------------------------------------------------------------------------- body sections


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    align = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(map(_cell, header)) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else ("" if value is None else str(value))


def _pct(x: Any) -> str:
    return "" if x is None else f"{100 * float(x):.1f}%"


def _intro(info: VersionInfo, export: ExportResult, export_info: Mapping[str, Any]) -> str:
    rows = [
        ["dataset", f"`{info.ref}`"],
        ["created (UTC)", info.created_at],
        ["config hash", f"`{info.config_hash}`"],
        ["code version", f"`{info.code_version}`"],
        ["parents", ", ".join(f"`{p}`" for p in info.parents) or "none"],
    ]
    if info.run_id:
        rows.append(["run", f"`{info.run_id}`"])
    for i in info.inputs:
        digest = i.get("sha256") or i.get("fingerprint")
        where = i.get("path") or i.get("id") or ""
        rows.append([f"input `{i.get('source', '')}`", f"{Path(str(where)).name} (sha256 `{str(digest)[:16]}`)" if digest else where])
    text = (
        f"# {info.ref}\n\n"
        "Preference pairs curated with `curate` (ingest, validate, dedup, and the recipe's generate, label and "
        "filter stages) and exported in TRL's DPO format. Every number on this card was recorded with the "
        "version when it was published, or written by the export.\n\n" + _table(["", ""], rows)
    )
    files = data_files(export)
    split_rows = [[e["split"], f"{export.counts.get(e['split'], 0):,}", f"`{e['path']}`"] for e in files]
    text += f"\n## Files\n\nTRL preference format, **{export.style}** style"
    text += (
        " (`prompt`, `chosen` and `rejected` are lists of `{role, content}` messages; the trainer applies its chat template)"
        if export.style == "conversational"
        else " (`prompt`, `chosen` and `rejected` are strings)"
    )
    seed, test_size = export_info.get("seed"), export_info.get("test_size")
    if seed is not None and test_size is not None:
        text += f"; a seeded split by pair id (test size {test_size:g}, seed {seed})"
    text += ". `pair_id` traces each row to the curated `pairs` table.\n\n"
    text += _table(["split", "pairs", "file"], split_rows, right=[1]) if split_rows else "No pairs were exported.\n"
    if export.skipped_unlabeled:
        text += f"\n{export.skipped_unlabeled:,} unlabeled (generated) pairs were left out: no labeler decided their order.\n"
    return text


def _recipe(config: Mapping[str, Any]) -> str:
    body = yaml.safe_dump(json.loads(json.dumps(dict(config), default=str)), sort_keys=False, allow_unicode=True, width=120)
    return "## Recipe\n\nThe recipe as stored with the version (its content sections give the config hash):\n\n```yaml\n" + body + "```\n"


def _funnel_steps(f: Mapping[str, Any], published: int | None) -> list[tuple[str, int]]:
    """(label, count) in the order rows flow; removals negative. Missing keys are skipped."""
    steps: list[tuple[str, int]] = []

    def add(label: str, key: Any, sign: int = 1) -> None:
        if isinstance(key, int):
            steps.append((label, sign * key))

    add("rows in", f.get("rows_in"))
    add("quarantined at read/adapt", f.get("rows_quarantined"), -1)
    add("filtered at adapt", f.get("rows_filtered"), -1)
    add("pairs produced", f.get("pairs_out"))
    add("quarantined at validate", f.get("pairs_quarantined"), -1)
    add("filtered (dedup)", f.get("pairs_filtered"), -1)
    add("kept", f.get("kept"))
    add("held out for evaluation", (f.get("evaluation_set") or {}).get("held_out"), -1)
    g = f.get("generated") or {}
    if g:
        add("generated pairs considered", g.get("pairs_considered"))
        add("filtered (generate)", sum((g.get("filtered") or {}).values()), -1)
        add("generated pairs kept (unlabeled)", g.get("pairs_kept"))
    fc = f.get("filter") or {}
    if fc:
        add("pairs into the filters", fc.get("pairs_in"))
        for stage, s in (fc.get("steps") or {}).items():
            if s.get("filtered"):
                add(f"filtered ({stage})", s["filtered"], -1)
        add("filtered (human ties)", (fc.get("human_labels") or {}).get("filtered") or None, -1)
    add("published pairs", published)
    return steps


def _reasons(f: Mapping[str, Any]) -> list[tuple[str, str, str, int]]:
    rows: list[tuple[str, str, str, int]] = []
    for stage, codes in (f.get("quarantined_by_error") or {}).items():
        rows += [("quarantined", stage, code, n) for code, n in (codes or {}).items()]
    for stage, reasons in (f.get("filtered_by_reason") or {}).items():
        rows += [("filtered", stage, reason, n) for reason, n in (reasons or {}).items()]
    for reason, n in ((f.get("generated") or {}).get("filtered") or {}).items():
        rows.append(("filtered", "generate", reason, n))
    fc = f.get("filter") or {}
    for stage, reasons in (fc.get("filtered_by_reason") or {}).items():
        rows += [("filtered", stage, reason, n) for reason, n in (reasons or {}).items()]
    for stage, s in (fc.get("steps") or {}).items():
        rows += [(outcome, stage, "", s[outcome]) for outcome in ("flipped", "routed") if s.get(outcome)]
    return sorted((r for r in rows if r[3]), key=lambda r: -r[3])


def _funnel(f: Mapping[str, Any], info: VersionInfo, export: ExportResult) -> str:
    published = info.tables.get("pairs")
    steps = _funnel_steps(f, published)
    if not steps:
        return "## Funnel\n\nThis version recorded no funnel counts.\n"
    text = "## Funnel\n\nEvery input row ends in exactly one place: kept, filtered (with a stage and a reason) or quarantined.\n\n"
    text += _table(["step", "count"], [[label, f"{'-' if n < 0 else ''}{abs(n):,}"] for label, n in steps], right=[1])
    keys = ("rows_in", "rows_quarantined", "rows_filtered", "rows_with_pairs", "pairs_out", "pairs_quarantined", "pairs_filtered", "kept")
    if all(isinstance(f.get(k), int) for k in keys):
        ok = f["rows_in"] == f["rows_quarantined"] + f["rows_filtered"] + f["rows_with_pairs"] and f["pairs_out"] == (
            f["pairs_quarantined"] + f["pairs_filtered"] + f["kept"]
        )
        text += (
            f"\nRow accounting: {f['rows_in']:,} rows in = {f['rows_quarantined']:,} quarantined + {f['rows_filtered']:,} filtered"
            f" + {f['rows_with_pairs']:,} with pairs; {f['pairs_out']:,} pairs = {f['pairs_quarantined']:,} quarantined"
            f" + {f['pairs_filtered']:,} filtered + {f['kept']:,} kept ({'checked before publishing' if ok else 'MISMATCH'}).\n"
        )
    fc = f.get("filter") or {}
    if fc:
        text += (
            f"\nFilters: {_n(fc.get('pairs_in'))} pairs in, {_n(fc.get('filtered'))} filtered, {_n(fc.get('pairs_out'))} published;"
            f" {_n(fc.get('flipped', 0))} flipped (chosen and rejected swapped), {_n(fc.get('routed', 0))} routed to people.\n"
        )
    exported = sum(export.counts.get(s, 0) for s in SPLITS)
    if published is not None:
        text += f"\nPublished pairs: {published:,}; exported: {exported:,}"
        text += f" ({export.skipped_unlabeled:,} unlabeled left out).\n" if export.skipped_unlabeled else ".\n"
    reasons = _reasons(f)
    if reasons:
        text += "\n### Removed, by stage and reason\n\n" + _table(
            ["outcome", "stage", "reason", "count"], [[*r[:3], f"{r[3]:,}"] for r in reasons], right=[3]
        )
    return text


def _agreement(f: Mapping[str, Any]) -> str:
    labels = f.get("labels") or {}
    if not labels.get("agreement"):
        return ""
    rows = [[str(c) for c in row] for row in agreement_rows(labels)]
    return (
        "## Label agreement\n\nEach AI labeler against the human labels of the same pairs (ties and invalid labels apart), "
        f"beside the length baseline on the same pairs. {AGREEMENT_NOTE}\n\n" + _table(AGREEMENT_HEADER, rows, right=list(range(2, 12)))
    )


def decontaminate_steps(config: Mapping[str, Any], funnel: Mapping[str, Any]) -> dict[str, dict[str, int | None]]:
    """``{stage name: {reference: its prompts, or None when not recorded}}`` of the recipe's
    decontaminate steps. The references the step recorded in its summary (benchmarks, and
    ``evaluation`` when the run had evaluation prompts), else the recipe's benchmark names."""
    out: dict[str, dict[str, int | None]] = {}
    for step in (config.get("filter") or {}).get("steps") or []:
        if isinstance(step, Mapping) and step.get("kind") == DECONTAMINATE:
            names = [b.get("name") for b in step.get("benchmarks") or [] if isinstance(b, Mapping) and b.get("name")]
            out[step.get("name") or DECONTAMINATE] = dict.fromkeys(names)
    for stage, s in ((funnel.get("filter") or {}).get("steps") or {}).items():
        if isinstance(s, Mapping) and s.get("kind") == DECONTAMINATE:
            refs = (s.get("summary") or {}).get("references")
            out[stage] = {str(k): v for k, v in refs.items()} if isinstance(refs, Mapping) else out.get(stage, {})
    return out


def _recorded_matches(funnel: Mapping[str, Any], stage: str) -> dict[str, dict[str, int]] | None:
    """The step's own ``{reference: {match kind: pairs}}`` summary, when it recorded one."""
    s = ((funnel.get("filter") or {}).get("steps") or {}).get(stage) or {}
    matches = (s.get("summary") or {}).get("matches")
    return {str(r): dict(k) for r, k in matches.items()} if isinstance(matches, Mapping) else None


def _decontamination(
    config: Mapping[str, Any], funnel: Mapping[str, Any], counts: Mapping[str, Mapping[str, Mapping[str, int]]] | None
) -> str:
    steps = decontaminate_steps(config, funnel)
    if not steps:
        return "## Decontamination\n\nThe recipe has no decontaminate step: the pairs were not checked against benchmark prompts.\n"
    text = (
        "## Decontamination\n\nPairs removed because their prompt overlaps a benchmark prompt (or one of the run's evaluation "
        "prompts: `evaluation`), by exact match, n-gram coverage or MinHash:\n\n"
    )
    rows = []
    for stage, references in steps.items():
        by_ref = (counts or {}).get(stage) if counts is not None else _recorded_matches(funnel, stage)
        if by_ref is None:
            n = (((funnel.get("filter") or {}).get("steps") or {}).get(stage) or {}).get("filtered")
            rows.append([stage, "(all)", "", _n(n) if n is not None else "not recorded", ""])
            continue
        for ref in dict.fromkeys([*references, *by_ref]) or [""]:
            kinds = by_ref.get(ref) or {}
            detail = ", ".join(f"{k} {n:,}" for k, n in sorted(kinds.items(), key=lambda x: -x[1]))
            rows.append([stage, ref, _n(references.get(ref)), f"{sum(kinds.values()):,}", detail])
    return text + _table(["step", "benchmark", "benchmark prompts", "pairs removed", "by match"], rows, right=[2, 3])


def _evaluation(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return (
            "## Evaluation\n\nNo evaluation recorded for this version. `curate eval NAME@V` trains proxy models on it and "
            "measures them on human preferences they never saw.\n"
        )
    table = []
    for r in rows:
        diff = ""
        if r.get("difference") is not None:
            lo, hi = r.get("difference_low"), r.get("difference_high")
            ci = f" ({100 * lo:+.1f} to {100 * hi:+.1f})" if lo is not None and hi is not None else ""
            diff = f"{100 * r['difference']:+.1f} pt{ci} vs {r.get('reference') or 'reference'}"
        acc = _pct(r.get("accuracy"))
        if r.get("ci_low") is not None and r.get("ci_high") is not None:
            acc += f" ({_pct(r['ci_low'])} - {_pct(r['ci_high'])})"
        table.append([r.get("variant", ""), r.get("trainer", ""), acc, _n(r.get("eval_pairs")), _n(r.get("leaked_excluded")), diff])
    sets = sorted({str(r.get("eval_set")) for r in rows if r.get("eval_set")})
    text = (
        "## Evaluation\n\nProxy models trained on the pairs, measured on human-labelled pairs they never saw (accuracy: the "
        "share where the model prefers the human's choice, ties half; 95% bootstrap interval). Evaluation pairs whose prompt "
        "is in the training pairs are left out (leaked). Baselines need no training: a proxy model earns its place above them. "
        "A difference is against the reference variant, on the same pairs, with a paired bootstrap interval.\n\n"
    )
    if sets:
        text += "Evaluation set: " + "; ".join(sets) + ".\n\n"
    return text + _table(
        ["variant", "trainer", "accuracy (95% CI)", "eval pairs", "leaked excluded", "vs reference (paired 95% CI)"], table, right=[3, 4]
    )


def _licence(licence: str, declared: str | None, config: Mapping[str, Any]) -> str:
    if licence == NO_LICENCE and not declared:
        sources = ", ".join(f"`{s.get('name')}`" for s in config.get("sources") or [] if isinstance(s, Mapping))
        return (
            "## Licence\n\n`other`: this card sets no licence of its own. The pairs are derived from the source data "
            f"({sources or 'see the recipe'}), and the licence of the source data applies to them.\n"
        )
    how = "as the recipe's sources declare" if declared and licence == declared else "as given at export"
    return f"## Licence\n\n`{licence}` ({how}). Check that it agrees with the licence of the source data.\n"


def _use(info: VersionInfo) -> str:
    return (
        "## Use\n\n```python\nfrom datasets import load_dataset\n\n"
        'ds = load_dataset("PATH_OR_REPO")  # the export folder, or the Hub repo it was pushed to\n```\n\n'
        f"Reproduce: `curate export {info.ref} --format trl --out DIR` on the data root holding the dataset.\n"
    )


# --------------------------------------------------------------------------- from the store


def decontamination_counts(store: DatasetStore, info: VersionInfo) -> dict[str, dict[str, dict[str, int]]] | None:
    """``{step: {benchmark: {reason: pairs}}}`` of the pairs the version's decontaminate steps
    filtered, from its ``decisions`` table (``matched_pair_id`` is ``BENCHMARK:ROW``). None when
    the recipe has no such step or the version has no decisions table."""
    import pyarrow.compute as pc

    steps = decontaminate_steps(info.config, info.counts)
    if not steps or "decisions" not in info.tables:
        return None
    out: dict[str, dict[str, dict[str, int]]] = {s: {} for s in steps}
    wanted = list(steps)
    reader = store.scan(info.dataset, "decisions", version=info.version, columns=["stage", "decision", "reason", "matched_pair_id"])
    for batch in reader:
        mask = pc.and_(pc.is_in(batch.column("stage"), value_set=_strings(wanted)), pc.equal(batch.column("decision"), "filtered"))
        hit = batch.filter(pc.fill_null(mask, False))
        for stage, reason, matched in zip(*(hit.column(c).to_pylist() for c in ("stage", "reason", "matched_pair_id")), strict=True):
            bench = str(matched).split(":", 1)[0] if matched else "(unnamed)"
            by_reason = out[stage].setdefault(bench, {})
            by_reason[reason or ""] = by_reason.get(reason or "", 0) + 1
    return out


def _strings(values: list[str]) -> Any:
    import pyarrow as pa

    return pa.array(values, pa.string())


def evaluation_rows(store: DatasetStore, info: VersionInfo) -> list[dict[str, Any]]:
    """The version's evaluations: its own ``evaluations`` table (measured by the run before
    publishing), then the rows of the dataset's evaluation log (``curate eval``) for this version."""
    from curation.store.query import evaluation_log

    rows: list[dict[str, Any]] = []
    if "evaluations" in info.tables:
        rows += store.read(info.dataset, "evaluations", version=info.version).to_pylist()
    log = evaluation_log(store, info.dataset)
    rows += [r for r in log.to_pylist() if r.get("version") == info.version]
    seen, unique = set(), []
    for r in rows:
        key = (r.get("evaluation_id"), r.get("variant"), r.get("trainer"))
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return unique


def split_bytes(export: ExportResult) -> dict[str, int]:
    """Each carded split's size as Arrow data (what ``datasets`` records as ``num_bytes``),
    read batch by batch from the file the card points at."""
    import pyarrow as pa
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    out = Path(export.out_dir)
    sizes: dict[str, int] = {}
    for entry in data_files(export):
        paths = sorted(out.glob(entry["path"]))
        total = 0
        for path in paths:
            if path.suffix == ".parquet":
                total += sum(b.nbytes for b in pq.ParquetFile(path).iter_batches())
            elif path.suffix == ".arrow":
                with pa.memory_map(str(path)) as src:
                    total += sum(b.nbytes for b in pa.ipc.open_stream(src))
            else:
                total += sum(b.nbytes for b in pj.open_json(path))
        sizes[entry["split"]] = total
    return sizes


def write_card(store: DatasetStore, info: VersionInfo, export: ExportResult, *, licence: str | None = None) -> Path:
    """Write ``README.md`` (the card) into the export folder; its path."""
    out = Path(export.out_dir)
    info_path = out / "export_info.json"
    export_info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    text = dataset_card(
        info,
        export=export,
        config=info.config,
        funnel=info.counts,
        evaluations=evaluation_rows(store, info),
        licence=licence,
        decontamination=decontamination_counts(store, info),
        export_info=export_info,
        num_bytes=split_bytes(export),
    )
    path = out / CARD
    path.write_text(text, encoding="utf-8")
    return path
