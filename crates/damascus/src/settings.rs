//! Turns command-line and environment values into the plain settings the libraries take.

use anyhow::Context;
use damascus_db::Target;

use crate::cli::DatabaseArgs;

pub fn database_target(args: &DatabaseArgs) -> anyhow::Result<Target> {
    match &args.database_url {
        Some(url) if !url.trim().is_empty() => Ok(Target::Url(url.trim().to_owned())),
        _ => {
            let data_dir = match &args.data_dir {
                Some(dir) if !dir.as_os_str().is_empty() => dir.clone(),
                _ => damascus_db::cluster::default_data_dir()
                    .context("cannot choose a data directory")?,
            };
            Ok(Target::Embedded { data_dir })
        }
    }
}

/// Logs go to stderr so that stdout carries only results.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
