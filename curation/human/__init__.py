"""The human side of hybrid human-AI labeling: what people are asked, and what they answered.

The ``route`` filter step (``curation.stages.filter.route``) decides which AI-labelled pairs a
person should check. This package carries them to people and back:

* ``tasks``: export routed pairs as annotation tasks (Label Studio, Argilla, Parquet / CSV);
* ``completed``: read completed annotation files (``read_completed``) and ``merge`` them into pairs;
* ``inbox``: a dataset's folder of completed files, merged by every later run of its recipe
  (``curate route import`` adds to it: ``curation.run.human_import``).
"""
