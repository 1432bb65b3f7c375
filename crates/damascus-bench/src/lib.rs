//! damascus-bench owns `damascus bench queue`: the queue's throughput through the real
//! worker pool, pickup latency, the cost of a claim, a bare
//! `SKIP LOCKED` queue for scale, the machine's CPU per job and per commit
//! (`machine_cpu`), and the baseline all of them are compared with: the best
//! single-row commit rate the server reaches (`baseline`: this crate's client at a few
//! client counts, and pgbench when it is installed). It also writes the report the
//! command prints (`report`).
//!
//! Architecture invariants: everything here runs in scratch databases it creates and
//! drops (`damascus_bench_<pid>_<part>`), never in the product's database. Its SQL (the
//! statements it times and the tables it creates, `sql/`) stays in this crate, outside
//! the migrations; it must not change the product's schema, the queue's code or the
//! migrations, and no product crate depends on it (only the binary does). It drives the
//! queue through `damascus-queue`'s public API and the claim through the same SQL
//! functions the workers call, so what it times is the product's path.

pub mod baseline;
pub mod machine_cpu;
mod queue;
pub mod report;
mod statements;

pub use queue::{
    pickup_latency, run, throughput, BacklogResult, BareQueue, BenchConfig, BenchReport, Latency,
    Round,
};
