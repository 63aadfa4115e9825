"""Readers: source files (or HF datasets) in, ``RawRow``s out, one reader per file.

Row-level problems never stop a run: they come out as RawRows with a ``RowError``
(unparsable_json, undecodable_text, row_too_large, not_an_object, truncated_file,
csv_error) for quarantine. File-level problems raise ``SourceError`` with a message that
names the file. Everything streams with bounded memory except .json documents (see
jsondoc.py). One module per format; this package's API is the three names below.
"""

from curation.stages.ingest.readers._common import FileReader, RawRow
from curation.stages.ingest.readers.resolve import open_source

__all__ = ["FileReader", "RawRow", "open_source"]
