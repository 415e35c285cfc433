"""Helpers for zipmount's end-to-end tests: a real moto S3 server over TLS, sample archives,
and real FUSE mounts driven through the zipmount CLI."""
