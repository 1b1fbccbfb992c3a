//! What the scale benchmark needs besides its phases: the operator as a
//! process, readings from /proc, and latency summaries.

pub mod operator;
pub mod procfs;
pub mod stats;
