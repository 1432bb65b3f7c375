//! The loops end to end: a real database, real git repositories (a bare one plays the
//! remote), the local forge, scripted agents, and an OpenAI-compatible HTTP server
//! inside the test where a model is needed.

mod agents;
mod claude_code;
mod codex;
mod faults;
mod flow;
mod follow_up;
mod forge_faults;
mod gemini;
mod gitea;
mod github;
mod hangs;
mod merge_queue;
mod model;
mod opencode;
mod safety;
mod secrets;
mod sessions;
mod support;
