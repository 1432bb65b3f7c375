//! `damascus db start|stop`: the embedded cluster's lifecycle, by hand.

use anyhow::bail;
use damascus_db::cluster::{Durability, EmbeddedCluster, StopOutcome};
use damascus_db::{Origin, PoolSettings, Target};

const NOT_EMBEDDED: &str = "DATABASE_URL is set, so damascus does not manage that server; unset it to control the embedded cluster";

pub async fn start(target: &Target) -> anyhow::Result<()> {
    if matches!(target, Target::Url(_)) {
        bail!(NOT_EMBEDDED);
    }
    let db = damascus_db::open(target, PoolSettings::default()).await?;
    if let Origin::Embedded { layout, .. } = &db.origin {
        println!(
            "embedded cluster running; socket {}",
            layout.socket_dir.display()
        );
        println!(
            "connect with: {}",
            layout.psql_hint(damascus_db::connect::EMBEDDED_DATABASE)
        );
    }
    Ok(())
}

pub fn stop(target: &Target) -> anyhow::Result<()> {
    let Target::Embedded { data_dir } = target else {
        bail!(NOT_EMBEDDED);
    };
    let cluster = EmbeddedCluster::new(data_dir, Durability::Durable)?;
    match cluster.stop()? {
        StopOutcome::Stopped => println!(
            "embedded cluster in {} stopped",
            cluster.layout.pgdata.display()
        ),
        StopOutcome::NotRunning => println!(
            "embedded cluster in {} was not running",
            cluster.layout.pgdata.display()
        ),
    }
    Ok(())
}
