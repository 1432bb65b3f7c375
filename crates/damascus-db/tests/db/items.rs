use damascus_core::{NewProject, Phase, ProjectName, Story};
use damascus_db::items::{self, ItemFilter};
use damascus_db::{events, projects, DbError};
use damascus_testdb::TestDatabase;

async fn with_project(db: &TestDatabase, name: &str) {
    let mut project = NewProject::local(ProjectName::parse(name).unwrap(), "/srv/git/x.git");
    project.max_attempts_per_phase = 2;
    project.max_attempts_total = 5;
    projects::add_project(&db.pool, &project).await.unwrap();
}

fn story(title: &str) -> Story {
    Story::new(title, "As a user I want it.").unwrap()
}

#[tokio::test]
async fn ingest_stores_the_item_and_its_event_together() {
    let db = TestDatabase::new().await;
    with_project(&db, "web").await;
    let name = ProjectName::parse("web").unwrap();
    let item = items::ingest(&db.pool, &name, &story("Add login"), "cli")
        .await
        .unwrap();
    assert_eq!(item.phase, Phase::Spec);
    assert_eq!(item.project, "web");
    assert_eq!(
        (item.max_attempts_per_phase, item.max_attempts_total),
        (2, 5)
    );
    let timeline = events::for_item(&db.pool, item.id).await.unwrap();
    assert_eq!(timeline.len(), 1);
    assert_eq!(timeline[0].kind, "item.ingested");
    assert_eq!(timeline[0].payload["title"], "Add login");
}

#[tokio::test]
async fn ingest_into_an_unknown_project_writes_nothing() {
    let db = TestDatabase::new().await;
    let name = ProjectName::parse("ghost").unwrap();
    let err = items::ingest(&db.pool, &name, &story("x"), "cli")
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::ProjectNotFound(_)), "{err:?}");
    let events: i64 = sqlx::query_scalar("select count(*) from events_outbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(events, 0);
}

#[tokio::test]
async fn list_filters_by_project_and_phase() {
    let db = TestDatabase::new().await;
    with_project(&db, "web").await;
    with_project(&db, "api").await;
    for (project, title) in [("web", "a"), ("web", "b"), ("api", "c")] {
        let name = ProjectName::parse(project).unwrap();
        items::ingest(&db.pool, &name, &story(title), "cli")
            .await
            .unwrap();
    }
    let filter = |project: Option<&str>, phase: Option<Phase>| ItemFilter {
        project: project.map(str::to_owned),
        phase,
        limit: 100,
        offset: 0,
        ..ItemFilter::default()
    };
    let titles = |list: Vec<items::WorkItem>| list.into_iter().map(|i| i.title).collect::<Vec<_>>();
    assert_eq!(
        titles(
            items::list_items(&db.pool, &filter(None, None))
                .await
                .unwrap()
        ),
        ["a", "b", "c"]
    );
    assert_eq!(
        titles(
            items::list_items(&db.pool, &filter(Some("web"), None))
                .await
                .unwrap()
        ),
        ["a", "b"]
    );
    assert!(
        items::list_items(&db.pool, &filter(None, Some(Phase::Merged)))
            .await
            .unwrap()
            .is_empty()
    );
    let err = items::list_items(&db.pool, &filter(Some("nope"), None))
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::ProjectNotFound(_)));
    let page = ItemFilter {
        limit: 1,
        offset: 1,
        ..filter(None, None)
    };
    assert_eq!(
        titles(items::list_items(&db.pool, &page).await.unwrap()),
        ["b"]
    );
}

#[tokio::test]
async fn unknown_item_says_how_to_list() {
    let db = TestDatabase::new().await;
    let err = items::get_item(&db.pool, 42).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "work item 42 not found; list items with: damascus items"
    );
}
