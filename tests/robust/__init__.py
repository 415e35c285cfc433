"""Test-side machinery for zipmount's robustness tests (faults, hostile archives, object changes,
resource bounds, stress, fuzzing): a plain-HTTP moto S3 server, a fault-injecting HTTP proxy,
byte-level zip builders, and probes of a running daemon's /proc entries."""
