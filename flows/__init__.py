"""Prefect flows over the curation library.

Importing the package makes Prefect's temporary (ephemeral) API server exit with the process
that started it, even when that process is killed (``flows.ephemeral``).
"""

from flows.ephemeral import install

install()
