//! Criterion benchmarks live in `benches/`, the HTTP load benchmark in
//! `load/run` (its baseline server is `src/bin/bare_axum.rs`); this library
//! is empty on purpose.
