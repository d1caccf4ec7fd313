//! Recorded logs and the read-model snapshots they must fold to; the harness lives in `tests/`.
