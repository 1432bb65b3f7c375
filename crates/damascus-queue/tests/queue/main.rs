//! The queue engine against a real PostgreSQL, with real worker processes where the
//! behaviour is about processes (several workers, a SIGKILL).
//!
//! Child worker processes are this test binary run again with `QUEUE_TEST_WORKER` set:
//! `worker_process::entry` then runs a worker pool until it receives SIGTERM.

mod cap_and_processes;
mod exits;
mod hangs;
mod operator;
mod support;
mod transactional;
mod verdicts;
mod worker_process;
