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

/// A project `web` with one item ingested, and a registered worker with a cap of two:
/// the item's id and the worker.
async fn one_item_and_a_worker(
    db: &damascus_testdb::TestDatabase,
) -> (i64, damascus_db::jobs::Registered) {
    let name = damascus_core::ProjectName::parse("web").unwrap();
    damascus_db::projects::add_project(
        &db.pool,
        &damascus_core::NewProject::local(name.clone(), "/srv/git/web.git"),
    )
    .await
    .unwrap();
    let story = damascus_core::Story::new("Greet", "As a user I want a greeting.").unwrap();
    let item = damascus_db::items::ingest(&db.pool, &name, &story, "test")
        .await
        .unwrap()
        .id;
    let worker = damascus_db::jobs::register_worker(&db.pool, &worker_info(), Some(2))
        .await
        .unwrap();
    (item, worker)
}

fn worker_info() -> damascus_db::jobs::WorkerInfo {
    damascus_db::jobs::WorkerInfo {
        host: "build-1".into(),
        pid: 1,
        lease: std::time::Duration::from_secs(30),
    }
}
