//! `damascus mcp`: the MCP server on stdio. Nothing but protocol messages goes to
//! stdout; logs go to stderr.

use anyhow::anyhow;
use damascus_db::Target;

use crate::commands::open_migrated;

pub async fn run(target: &Target) -> anyhow::Result<()> {
    let db = open_migrated(target).await?;
    damascus_mcp::serve_stdio(db.pool.clone())
        .await
        .map_err(|e| anyhow!("the MCP session failed: {e}"))
}
