//! The orders service's tests: one binary.

mod flow;
mod saga;
