"""Proving the curation: proxy models trained on a dataset version, measured on human
preferences they never saw.

* ``trainers/``: the proxy trainers (a Bradley-Terry head on frozen embeddings, a reward model,
  DPO), one module each behind one ``Trainer`` contract;
* ``stats``: accuracy with a bootstrap interval, the paired bootstrap of a difference, the
  trivial baselines (random, longer wins, shorter wins) on the same pairs.
"""
