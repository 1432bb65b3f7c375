//! damascus-db against a real PostgreSQL: one test binary, so that every test shares
//! the harness's cluster and template.

mod cluster;
mod forge_limits;
mod items;
mod pause;
mod projects;
mod queue_view;
mod schema;
mod upgrade;
