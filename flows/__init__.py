"""Prefect flows over the curation library. Each task is a thin wrapper over a pure stage."""
