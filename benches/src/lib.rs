//! Criterion benchmarks of mainstay beside its peers; see `BENCHMARKS.md` at the repository root.
