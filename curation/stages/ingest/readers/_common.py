"""What every format reader shares: the row type, the reader protocol, the source's row
limit, raw-text rendering for quarantine, and opening files as hashed byte streams.

Kept apart from the format modules so each of those stays small and its hot loop can bind
these helpers to locals.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from curation.errors import RowError, SourceError
from curation.files import file_digest

READ_BUFFER = 1 << 20  # 1 MiB: few syscalls, and hashing in big chunks
GZIP_MAGIC = b"\x1f\x8b"
BOM = b"\xef\xbb\xbf"
# What a gzip stream raises when it ends early or is corrupt part-way through.
GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)
# Byte order marks of the UTF encodings other than UTF-8, longest first (UTF-32 LE starts like UTF-16 LE).
UTF_BOMS = ((b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))
SNIFF_BYTES = 512


@dataclass(slots=True)
class RawRow:
    """One row as read from a file, before any adapter looked at it.

    ``index`` is the row's position in the file: the physical line index for JSONL/CSV
    (line number - 1, blank lines skipped but still counted), the element / row position
    for JSON arrays, Parquet and HF datasets. Exactly one of ``value`` and ``error`` is set.
    ``raw`` is what quarantine shows (cut to raw_limit_bytes); ``raw_bytes`` the full size.
    Slots, no validation: a million of these are built per benchmark run.
    """

    index: int
    value: dict | None
    raw: str | None
    raw_bytes: int
    error: RowError | None


@runtime_checkable
class FileReader(Protocol):
    """One file (or one HF dataset split) of a source."""

    label: str

    def rows(self) -> Iterator[RawRow]: ...

    def fingerprint(self) -> dict[str, Any]: ...


class RowBudget:
    """A source's ``limit``, shared in order by the readers open_source made for it.

    Reader ``pos`` may yield ``limit`` minus what the readers before it yielded in their
    last pass, so iterating the readers once in order caps the total, and iterating one
    again gives the same rows.
    """

    def __init__(self, limit: int | None = None):
        self.limit = limit
        self.taken: dict[int, int] = {}

    def allowance(self, pos: int) -> int:
        if self.limit is None:
            return sys.maxsize
        return max(0, self.limit - sum(n for p, n in self.taken.items() if p < pos))

    def record(self, pos: int, count: int) -> None:
        self.taken[pos] = count


def limited(budget: RowBudget, pos: int, make_rows: Callable[[int], Iterator[RawRow]]) -> Iterator[RawRow]:
    """The rows of ``make_rows(allowance)``, cut at reader ``pos``'s share of the source limit;
    how many were yielded is recorded in ``budget`` however the pass ends. Readers size
    their batches by ``allowance`` and leave the counting to this one place."""
    allowance = budget.allowance(pos)
    count = 0
    try:
        if allowance <= 0:
            return
        rows = make_rows(allowance)
        try:
            for row in rows:
                yield row
                count += 1
                if count >= allowance:
                    return
        finally:
            rows.close()
    finally:
        budget.record(pos, count)


def error_row(index: int, code: str, message: str, raw: str | None, raw_bytes: int) -> RawRow:
    return RawRow(index, None, raw, raw_bytes, RowError(code, message))


def cut_utf8(data: bytes, limit: int) -> bytes:
    """``data`` cut to at most ``limit`` bytes without splitting a UTF-8 character."""
    if len(data) <= limit:
        return data
    end = limit
    while end > 0 and end > limit - 3 and (data[end] & 0xC0) == 0x80:
        end -= 1
    return data[:end]


def raw_text(data: bytes, limit: int) -> str:
    """Quarantine text for bytes that may not be UTF-8: bad bytes shown as ``\\xNN``."""
    text = cut_utf8(data, limit).decode("utf-8", "backslashreplace")
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) > limit:  # escapes made it longer than the limit
        text = encoded[:limit].decode("utf-8", "ignore")
    return text


def describe_decode_error(data: bytes, err: UnicodeDecodeError) -> str:
    return f"byte 0x{data[err.start]:02x} at byte {err.start + 1} cannot be decoded ({err.reason})"


def translate_os_error(path: Path | str, err: OSError) -> SourceError:
    """A file-level OSError as the user should read it (no library traceback)."""
    if isinstance(err, FileNotFoundError):
        return SourceError(f"source file not found: {path}")
    if isinstance(err, PermissionError):
        return SourceError(f"cannot read {path}: permission denied")
    if isinstance(err, IsADirectoryError):
        return SourceError(f"{path} is a directory, not a file")
    return SourceError(f"cannot read {path}: {err.strerror or err}")


class _HashingRaw(io.RawIOBase):
    """A raw file that hashes every byte as it is read, so a full pass yields the sha256
    without a second read. It sits under the buffers, so it sees each chunk once."""

    def __init__(self, path: Path):
        self._f = io.FileIO(path, "r")
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self._f.readinto(b)
        if n:
            with memoryview(b) as view:
                self.sha.update(view[:n])
            self.nbytes += n
        return n

    def drain(self) -> None:
        """Hash whatever the decoder left unread (e.g. bytes after a gzip error)."""
        buf = bytearray(READ_BUFFER)
        while self.readinto(buf):
            pass

    def close(self) -> None:
        self._f.close()
        super().close()


def is_gzip_name(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


@dataclass(frozen=True)
class Layout:
    """How a text file's bytes become UTF-8 text: gzipped or not (by its signature, whatever
    its name), and its encoding when a byte order mark says it is UTF-16 or UTF-32."""

    gzip: bool
    encoding: str | None  # None: UTF-8

    @property
    def plain(self) -> bool:
        return not self.gzip and self.encoding is None


def sniff(path: Path) -> Layout:
    """The file's ``Layout``, from its first bytes (after gunzipping). A file that holds NUL
    bytes early on and has no byte order mark is UTF-16/32 without one, or not text at all:
    a ``SourceError`` that says so, instead of a row of garbage per line."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as err:
        raise translate_os_error(path, err) from None
    packed = head[:2] == GZIP_MAGIC
    if packed:
        try:
            with gzip.open(path, "rb") as f:
                head = f.read(SNIFF_BYTES)
        except (OSError, *GZIP_ERRORS):
            return Layout(True, None)  # a broken stream: the reader quarantines what it cannot read
    for bom, encoding in UTF_BOMS:
        if head.startswith(bom):
            return Layout(packed, encoding)
    if head.count(0) * 4 >= len(head) > 0:
        raise SourceError(
            f"{path} is not UTF-8 text: {head.count(0)} of its first {len(head)} bytes are NUL (UTF-16 or UTF-32 without a "
            "byte order mark, or a binary file); save it as UTF-8 (or UTF-16 with a byte order mark)"
        )
    return Layout(packed, None)


def check_file(path: Path) -> None:
    """File-level checks done when the source is opened, before any row is read."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as err:
        raise translate_os_error(path, err) from None
    if is_gzip_name(path) and head != GZIP_MAGIC:
        what = "it is empty" if not head else "it does not start with the gzip signature"
        raise SourceError(f"{path} is not a gzip file ({what}); decompress it or fix its name")
    sniff(path)


class _Utf8(io.RawIOBase):
    """A UTF-16 or UTF-32 byte stream as UTF-8 bytes, decoded as it is read. Invalid code
    units come through as lone surrogates, so the row that holds one is quarantined as
    undecodable text; a stream that ends in the middle of a character is a ``SourceError``."""

    def __init__(self, source: io.RawIOBase | io.BufferedIOBase, encoding: str, label: str):
        self._source, self._encoding, self._label = source, encoding, label
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="surrogatepass")
        self._pending = b""
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._pending and not self._done:
            chunk = self._source.read(READ_BUFFER)
            try:
                text = self._decoder.decode(chunk or b"", final=not chunk)
            except UnicodeDecodeError as err:
                raise SourceError(
                    f"{self._label} is not valid {self._encoding} text: it ends in the middle of a character ({err.reason})"
                ) from None
            self._pending = text.encode("utf-8", "surrogatepass")
            self._done = not chunk
        n = min(len(b), len(self._pending))
        b[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def open_stream(path: Path, layout: Layout | None = None) -> tuple[io.BufferedReader, _HashingRaw]:
    """The file's content as a buffered stream of UTF-8 bytes (gunzipped when it is gzip,
    decoded when it is UTF-16/32: ``sniff``), and the hashing raw file under it (its sha256 is
    that of the bytes on disk). Close both (``with hashed, stream:``): a GzipFile does not
    close the file it reads from.

    GzipFile is used as is, not under a second buffer: its reads return what has been
    decompressed so far, so when the stream ends early every complete line before the
    break has been handed out (a buffer filling itself to 1 MiB would lose them)."""
    layout = layout or sniff(path)
    try:
        hashed = _HashingRaw(path)
    except OSError as err:
        raise translate_os_error(path, err) from None
    stream: Any = io.BufferedReader(hashed, READ_BUFFER)
    if layout.gzip:
        stream = gzip.GzipFile(fileobj=stream, mode="rb")
    if layout.encoding is not None:
        stream = io.BufferedReader(_Utf8(stream, layout.encoding, str(path)), READ_BUFFER)
    return stream, hashed


def skip_bom(stream: io.BufferedReader) -> None:
    """A UTF-8 byte order mark at the start is tolerated (Excel and Notepad write one)."""
    if stream.peek(3)[:3] == BOM:
        stream.read(3)


def file_fingerprint(path: Path) -> dict[str, Any]:
    """sha256 and size of the file's bytes."""
    try:
        size, sha = file_digest(path)
    except OSError as err:
        raise translate_os_error(path, err) from None
    return {"path": str(path), "bytes": size, "sha256": sha}


class FileReaderBase:
    """Label, limit and fingerprint bookkeeping shared by the file-based readers.

    A subclass yields its rows from ``_rows(allowance)`` (``rows()`` applies the limit) and
    calls ``_finished(hashed)`` after a full pass, so that
    ``fingerprint()`` uses the sha256 computed while streaming; otherwise (no pass yet,
    a pass cut short by the limit) it reads the file.
    """

    def __init__(self, path: Path, *, max_row_bytes: int, raw_limit_bytes: int, budget: RowBudget | None = None, pos: int = 0):
        self.path = Path(path)
        self.label = str(path)
        self.max_row_bytes = max_row_bytes
        self.raw_limit_bytes = raw_limit_bytes
        self._budget = budget or RowBudget()
        self._pos = pos
        self._digest: dict[str, Any] | None = None

    def rows(self) -> Iterator[RawRow]:
        return limited(self._budget, self._pos, self._rows)

    def _rows(self, allowance: int) -> Iterator[RawRow]:
        raise NotImplementedError

    def _finished(self, hashed: _HashingRaw) -> None:
        hashed.drain()
        self._digest = {"path": self.label, "bytes": hashed.nbytes, "sha256": hashed.sha.hexdigest()}

    def fingerprint(self) -> dict[str, Any]:
        if self._digest is not None:
            return dict(self._digest)
        fp = file_fingerprint(self.path)
        fp["path"] = self.label
        return fp

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r})"
