"""Preference-data curation: raw comparisons in, clean versioned DPO-ready datasets out.

The library never imports Prefect; ``flows/`` wraps these functions as tasks.
"""

__version__ = "0.1.0"
