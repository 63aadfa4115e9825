"""Anthropic HH-RLHF rows: ``{"chosen": transcript, "rejected": transcript}``.

A transcript is ``\\n\\nHuman: ...\\n\\nAssistant: ...`` repeated. Turns are split only on
those exact markers (a blank line then the speaker), because responses sometimes quote
``Human:`` inline and that text belongs to the response. The two transcripts normally
share every turn but the last; some upstream rows diverge earlier, which ``diverging``
decides how to handle.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from curation.columns import count_per_row, positions, ranges
from curation.errors import RowError
from curation.records import Message, PairDraft
from curation.stages.ingest.adapters._columns import ColumnForm, ColumnPairs, messages
from curation.stages.ingest.adapters._fields import get_str
from curation.text import PY_WHITESPACE

MARKER = re.compile(r"\n\n(Human|Assistant):")
ROLES = {"Human": "user", "Assistant": "assistant"}


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chosen_field: str = Field(default="chosen", description="field holding the preferred transcript")
    rejected_field: str = Field(default="rejected", description="field holding the dispreferred transcript")
    diverging: Literal["shared_prefix", "quarantine"] = Field(
        default="shared_prefix",
        description="transcripts that differ before the last turn: keep the shared prefix up to the last "
        "shared Human turn as prompt (each side keeps its remaining turns), or quarantine the row",
    )


def parse_transcript(text: str, field: str) -> list[Message]:
    """Turns of one transcript; ``malformed_transcript`` when it is not a Human/Assistant dialogue.

    One space after the marker and trailing whitespace are layout, not content, so they are
    stripped; everything else (inner newlines, inline ``Human:``) is kept exactly.
    """
    parts = MARKER.split(text)
    head, rest = parts[0], parts[1:]
    if head.strip():
        raise RowError(
            "malformed_transcript", f"field {field!r} has text before the first '\\n\\nHuman:' marker: {head[:60]!r}", field=field
        )
    if not rest:
        raise RowError("malformed_transcript", f"field {field!r} has no '\\n\\nHuman:' / '\\n\\nAssistant:' turns", field=field)
    turns: list[Message] = []
    for i in range(0, len(rest), 2):
        role, content = ROLES[rest[i]], rest[i + 1]
        if content.startswith(" "):
            content = content[1:]
        if turns and turns[-1]["role"] == role:
            raise RowError("malformed_transcript", f"field {field!r} has two {rest[i]} turns in a row (turn {len(turns)})", field=field)
        turns.append({"role": role, "content": content.rstrip()})
    if turns[0]["role"] != "user":
        raise RowError("malformed_transcript", f"field {field!r} starts with an Assistant turn, expected Human", field=field)
    if turns[-1]["role"] != "assistant":
        raise RowError("malformed_transcript", f"field {field!r} ends with a Human turn, expected a final Assistant turn", field=field)
    return turns


def build(options: Options) -> Callable[[dict, str], list[PairDraft]]:
    cf, rf = options.chosen_field, options.rejected_field

    def adapt(row: dict, row_key: str) -> list[PairDraft]:
        chosen = parse_transcript(get_str(row, cf), cf)
        rejected = parse_transcript(get_str(row, rf), rf)
        shared = 0  # number of leading turns both transcripts have in common
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        # The prompt must end with the user's turn: back off to the last shared Human turn.
        cut = shared
        while cut > 0 and chosen[cut - 1]["role"] != "user":
            cut -= 1
        if cut == 0:
            raise RowError(
                "diverging_transcript", f"fields {cf!r} and {rf!r} differ from the first Human turn on: no shared prompt", field=cf
            )
        diverged = len(chosen) - cut > 1 or len(rejected) - cut > 1
        metadata: dict = {}
        if diverged:
            if options.diverging == "quarantine":
                raise RowError(
                    "diverging_transcript",
                    f"fields {cf!r} and {rf!r} diverge at turn {shared}, before the last turn (diverging: quarantine)",
                    field=cf,
                )
            metadata = {"diverged_at_turn": shared, "chosen_turns": len(chosen), "rejected_turns": len(rejected)}
        return [PairDraft(prompt=chosen[:cut], chosen=chosen[cut:], rejected=rejected[cut:], metadata=metadata)]

    return adapt


# The columnar form: each marker becomes a separator plus a role letter, so one split gives
# [text before the first marker, "U<turn>", "A<turn>", ...]. Chosen texts that hold the
# separator themselves take the row path.
_SEPARATOR = "\x1e"
_MARKERS = ["\n\nHuman:", "\n\nAssistant:"]
_TAGGED = [_SEPARATOR + "U", _SEPARATOR + "A"]


def build_columns(options: Options) -> ColumnForm:
    """The columnar twin of ``build``. It vouches for the common row only: both transcripts
    well-formed, alternating Human/Assistant turns, identical up to their final Assistant
    turn, so the prompt is every turn but the last. Rows that diverge earlier, are malformed
    or have a missing or null field take the row path."""
    cf, rf = options.chosen_field, options.rejected_field

    def adapt(table: pa.Table) -> ColumnPairs:
        return _adapt_columns(pl.from_arrow(table.column(cf)), pl.from_arrow(table.column(rf)))

    return ColumnForm(tuple(dict.fromkeys((cf, rf))), adapt)


def _turn_parts(text: pl.Series) -> pl.Series:
    return text.fill_null("").str.replace_many(_MARKERS, _TAGGED).str.split(_SEPARATOR)


def _adapt_columns(chosen: pl.Series, rejected: pl.Series) -> ColumnPairs:
    """Only the chosen transcript is cut into turns: a vouched rejected one is the chosen one's
    text up to its last Assistant marker, then a final turn with no marker in it. (Markers
    cannot overlap one another, so none can straddle that point.)"""
    parts = _turn_parts(chosen)
    frame = pl.DataFrame({"c": chosen, "r": rejected, "parts": parts})
    # up to the last marker: the chosen text without its final turn (byte compares, no char counts)
    shared = pl.col("c").str.strip_suffix(pl.col("parts").list.last().str.slice(1))
    frame = frame.with_columns(shared=shared).with_columns(rejected_ok=pl.col("r").str.starts_with(pl.col("shared")))
    rest = pl.col("r").str.strip_prefix(pl.col("shared"))
    n_parts = frame["parts"].list.len().to_numpy().astype(np.int64)
    ends = np.cumsum(n_parts)
    flat = frame["parts"].explode()
    vouched = frame.select(
        (  # a null or empty transcript has no turns, so it fails the roles test
            ~pl.col("c").str.contains(_SEPARATOR, literal=True)
            & (pl.col("parts").list.first().str.strip_chars(PY_WHITESPACE) == "")
            & pl.col("rejected_ok")
            & ~rest.str.contains("\n\n(?:Human|Assistant):")
        ).fill_null(False)
    ).to_series().to_numpy() & _alternating_turns(flat, n_parts)
    prompt_len = np.maximum(n_parts - 2, 0)
    prompt_turns = flat.gather(ranges(ends - n_parts + 1, prompt_len)).str.slice(1)
    one = np.ones(len(n_parts), np.int64)
    assistant = pl.repeat("assistant", len(n_parts), eager=True)
    return ColumnPairs(
        prompt=messages(_alternating_roles(prompt_len), _content(prompt_turns), prompt_len),
        chosen=messages(assistant, _content(flat.gather(ends - 1).str.slice(1)), one),
        rejected=messages(assistant, _content(frame.select(rest.fill_null("")).to_series()), one),
        vouched=vouched,
    )


def _alternating_turns(parts: pl.Series, n_parts: np.ndarray) -> np.ndarray:
    """Per row: its turns (every part but the first, each led by its role letter) go U, A, U,
    ..., A, at least one pair of them."""
    position = positions(n_parts)
    letter = parts.str.slice(0, 1)
    right = np.where(position % 2 == 1, (letter == "U").to_numpy(), (letter == "A").to_numpy())
    return (count_per_row(~right & (position > 0), n_parts) == 0) & (n_parts >= 3) & (n_parts % 2 == 1)


def _alternating_roles(lengths: np.ndarray) -> pl.Series:
    """user, assistant, user, ... for each row's prompt turns (what a vouched transcript has)."""
    return pl.Series(["user", "assistant"]).gather(positions(lengths) % 2)


def _content(turns: pl.Series) -> pl.Series:
    """As ``parse_transcript``: one space after the marker and trailing whitespace are layout."""
    return turns.str.strip_prefix(" ").str.strip_chars_end(PY_WHITESPACE).fill_null("")
