//! Shared helpers for the benchmarks live beside them; this crate has no library code.
