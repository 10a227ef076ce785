"""The normal-reading archive: JSON Lines under ``<archive-dir>/patient_id=<id>/``, byte-for-byte.

Its file count follows patients and periods, never batches:

- a micro-batch *stages* its normal readings in one folder of its own,
  ``_staging/<tag>/batch=<n>/patient_id=<id>/period=<p>/part-*``, made whole and then renamed
  into place, so a staged batch is all there or not there;
- every ``archive.roll_every`` (and when the job stops or starts), the *roll* moves every staged
  batch into the published files, one per patient and period (``archive.period``, a day by
  default): ``patient_id=<id>/<period>-<nnn>.jsonl``, a new part only once a file holds
  ``archive.max_file_mb``. A roll writes a manifest first and is finished from it after a crash;
  each published file is replaced whole (a reader never sees half of one), and the staged
  batches go last (:mod:`bp_spark.archive.roll`).

Folders whose names start with ``_`` are the job's own (Spark and Hadoop readers skip them):
``_staging``, ``_rolls`` (the manifest, and per tag the last batch rolled). Readers of the
archive on this machine use :func:`bp_spark.archive.layout.archived_lines`.
"""
