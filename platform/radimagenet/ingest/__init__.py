"""Ingest: key images (DICOM, PNG, JPEG) into de-identified, patient-split WebDataset shards on S3.

Stages, each a small module: ``sources`` (what to read) → ``splits`` (split files, the refusal of
images without a patient) → ``process`` (decode, de-identify, split,
resize, encode: one pure function per file) → ``shards`` (tar writer streaming to S3) → ``run``
(the driver: pre-flight checks, parallelism, duplicates, journal for resume, report, manifest).
"""

from radimagenet.ingest.config import IngestConfig
from radimagenet.ingest.run import ingest

__all__ = ["IngestConfig", "ingest"]
