use damascus_core::{NewProject, ProjectName};
use damascus_db::projects;
use damascus_db::DbError;
use damascus_testdb::TestDatabase;

fn web() -> NewProject {
    NewProject::local(ProjectName::parse("web").unwrap(), "/srv/git/web.git")
}

#[tokio::test]
async fn add_find_and_list() {
    let db = TestDatabase::new().await;
    let mut project = web();
    project.cost_budget_usd = Some(2.5);
    project.test_command = Some("cargo test".into());
    let added = projects::add_project(&db.pool, &project).await.unwrap();
    assert_eq!(added.name, "web");
    assert_eq!(added.cost_budget_usd, Some(2.5));
    assert_eq!(
        projects::find_project(&db.pool, "web").await.unwrap(),
        added
    );
    let listed = projects::list_projects(&db.pool).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].items_total, 0);
}

#[tokio::test]
async fn duplicate_and_unknown_names_are_clear_errors() {
    let db = TestDatabase::new().await;
    projects::add_project(&db.pool, &web()).await.unwrap();
    let err = projects::add_project(&db.pool, &web()).await.unwrap_err();
    assert!(
        matches!(err, DbError::ProjectExists(ref n) if n == "web"),
        "{err:?}"
    );
    let err = projects::find_project(&db.pool, "api").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "project \"api\" not found; list projects with: damascus project list"
    );
}
