//! The keep-alive: extends the leases of this worker's running phases and its
//! heartbeat, three times per lease, and at once when an item is cancelled. A claim the
//! database no longer holds (it ended, or another claim took the job) stops its phase;
//! keep-alives failing for a whole lease stop every phase, since other workers may run
//! those jobs by then.
//!
//! Must not touch: claiming, ending claims (the completer's), or the reaper's
//! maintenance of other workers' claims.

use std::sync::Arc;

use damascus_db::jobs;
use tokio_util::sync::CancellationToken;

use crate::pool::{Shared, StopReason};

/// Keeps this worker's leases and heartbeat alive. When keep-alives fail for as long
/// as a lease lasts, other workers may already run these jobs: every running phase is
/// stopped, so the cap holds and no phase runs twice at once.
pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(shared.config.keep_alive_every()) => {}
            _ = shared.check_claims.notified() => {}
        }
        let claims = shared.running_claims();
        let kept = async {
            jobs::heartbeat(&shared.pool, &shared.registered, &shared.info).await?;
            jobs::keep_alive(&shared.pool, &claims, shared.config.lease).await
        };
        // A keep-alive that hangs (a lock it waits for, a server that stopped answering)
        // counts as failed once the next one is due, so the check below still runs.
        let kept = match tokio::time::timeout(shared.config.keep_alive_every(), kept).await {
            Ok(kept) => kept.map_err(|e| crate::error_chain::Chain(&e).to_string()),
            Err(_) => Err(format!(
                "no answer within {:?}",
                shared.config.keep_alive_every()
            )),
        };
        match kept {
            Ok(held) => {
                last_ok = tokio::time::Instant::now();
                for claim in claims.iter().filter(|c| !held.contains(c)) {
                    // Either it ended in the meantime (then it is no longer in the map)
                    // or another claim holds the job now.
                    shared.stop_running(claim, StopReason::LostClaim);
                }
            }
            Err(e) => {
                let silent = last_ok.elapsed();
                if silent + shared.config.keep_alive_every() >= shared.config.lease {
                    tracing::error!(error = %e, ?silent, "keep-alives failed for a whole lease; stopping every running phase");
                    for claim in &claims {
                        shared.stop_running(claim, StopReason::LostClaim);
                    }
                } else {
                    tracing::warn!(error = %e, "keep-alive failed; leases run out unless the next one succeeds");
                }
            }
        }
    }
}
