"""Ingest: read source files and turn their rows into canonical pair drafts."""
