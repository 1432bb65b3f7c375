//! `damascus init`: apply the migrations.

use damascus_db::{migrate, PoolSettings, Target};

pub async fn run(target: &Target) -> anyhow::Result<()> {
    let db = damascus_db::open(target, PoolSettings::default()).await?;
    let applied = migrate::apply(&db.pool).await?;
    let version = migrate::latest_version();
    if applied == 0 {
        println!("schema already at version {version}; nothing to do");
    } else {
        println!("applied {applied} migrations; schema at version {version}");
    }
    println!("database: {}", db.origin.display_url());
    Ok(())
}
