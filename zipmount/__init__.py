"""zipmount: mount zip archives in object storage (S3/MinIO) as a read-only FUSE tree."""

__version__ = "0.1.0"
