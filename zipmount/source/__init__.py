"""Source layer: reach objects through fsspec (s3fs for S3/MinIO), with identity, deadlines and retries.

Every remote call made by zipmount goes through :class:`Source`, which
- bounds it by one deadline (``timeout``): a dead or trickling endpoint ends in an error, never a hang;
- retries transient failures (connection reset mid-body, 5xx, SlowDown) with exponential backoff and
  full jitter, inside that deadline;
- pins every byte range to the object identity (ETag + size) the mount is serving: on S3 each GET
  carries ``If-Match``, so bytes of two versions can never be mixed;
- turns library exceptions into one-line :mod:`zipmount.errors` messages that never carry secrets.
"""

from __future__ import annotations

from ..store import ObjectInfo
from .filesystems import filesystem_location, with_s3_settings
from .fsspec_source import Source
from .options import StorageOptions
from .pinning import check_answer, pin_conditions

__all__ = ["ObjectInfo", "Source", "StorageOptions", "check_answer", "filesystem_location",
           "pin_conditions", "with_s3_settings"]
