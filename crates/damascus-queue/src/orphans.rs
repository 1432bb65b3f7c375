//! Process groups a dead worker left behind. Phases record each process group they
//! start (`damascus_db::processes`); a worker starting on a host, and its reaper after
//! that, kills the recorded groups on its host whose claim no longer holds a slot. A
//! group id that the kernel has since given to an unrelated process is told apart by
//! its leader's start time and the members' `DAMASCUS_CLAIM` variable.

use std::sync::OnceLock;

use damascus_db::processes::{self, JobProcess};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use sqlx::PgPool;

/// This machine's name, as workers register it and process groups are recorded.
pub fn host_name() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown".into())
    })
}

/// A process as `/proc/PID/stat` shows it: its group and its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    pid: i32,
    process_group: i32,
    start_ticks: i64,
}

fn read_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields follow the last ')'.
    let fields: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    Some(ProcStat {
        pid,
        process_group: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// The start time of process `pid` in clock ticks since boot, as recorded with its group.
pub fn start_ticks(pid: i32) -> Option<i64> {
    read_stat(pid).map(|stat| stat.start_ticks)
}

fn members(process_group: i32) -> Vec<ProcStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_stat)
        .filter(|stat| stat.process_group == process_group)
        .collect()
}

/// Whether the live group `process.process_group` is the one the phase started.
fn is_the_recorded_group(process: &JobProcess, members: &[ProcStat]) -> bool {
    let leader = members.iter().find(|m| m.pid == process.process_group);
    if leader.is_some_and(|l| l.start_ticks != process.leader_start_ticks) {
        return false;
    }
    // Every process of the group started with or after its leader.
    if members
        .iter()
        .any(|m| m.start_ticks < process.leader_start_ticks)
    {
        return false;
    }
    // Where a member's environment is readable, it names the claim.
    let marker = format!("DAMASCUS_CLAIM={}", process.claim);
    members.iter().all(|m| {
        match std::fs::read(format!("/proc/{}/environ", m.pid)) {
            Ok(environ) if !environ.is_empty() => environ
                .split(|b| *b == 0)
                .any(|var| var == marker.as_bytes()),
            // A zombie's or another user's environment cannot be read: the start times
            // above decide.
            _ => true,
        }
    })
}

/// Kills the process groups on this host whose claim ended without them; returns how
/// many groups were killed.
pub async fn sweep(pool: &PgPool) -> damascus_db::DbResult<usize> {
    let host = host_name();
    let mut killed = 0;
    for process in processes::orphans(pool, host).await? {
        let members = members(process.process_group);
        if !members.is_empty() && is_the_recorded_group(&process, &members) {
            match killpg(Pid::from_raw(process.process_group), Signal::SIGKILL) {
                Ok(()) => {
                    killed += 1;
                    tracing::warn!(
                        process_group = process.process_group,
                        item = process.item_id,
                        processes = members.len(),
                        "killed a process group that a dead worker left running"
                    );
                }
                Err(e) => tracing::warn!(
                    process_group = process.process_group,
                    error = %e,
                    "cannot kill a process group a dead worker left running"
                ),
            }
        }
        processes::forget(pool, host, process.process_group).await?;
    }
    Ok(killed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_stat() {
        let me = std::process::id() as i32;
        let stat = read_stat(me).expect("own stat");
        assert_eq!(stat.pid, me);
        assert_eq!(stat.process_group, nix::unistd::getpgrp().as_raw());
        assert!(stat.start_ticks > 0);
    }

    #[test]
    fn a_reused_group_id_is_not_the_recorded_group() {
        let process = JobProcess {
            process_group: 4242,
            claim: uuid::Uuid::nil(),
            item_id: 1,
            leader_start_ticks: 1000,
        };
        let leader = |start_ticks| ProcStat {
            pid: 4242,
            process_group: 4242,
            start_ticks,
        };
        assert!(!is_the_recorded_group(&process, &[leader(2000)]));
        let older_member = ProcStat {
            pid: 5000,
            process_group: 4242,
            start_ticks: 900,
        };
        assert!(!is_the_recorded_group(&process, &[older_member]));
    }
}
