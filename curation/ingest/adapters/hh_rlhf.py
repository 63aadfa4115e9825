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

from pydantic import BaseModel, ConfigDict, Field

from curation.errors import RowError
from curation.ingest.adapters._fields import get_str
from curation.records import Message, PairDraft

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
