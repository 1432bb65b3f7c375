//! The reviewer. Idempotent: a PR that is already merged passes; the merge names the
//! commit that was tested, so a branch that moved since is reviewed again, never
//! merged untested.

use std::time::Duration;

use damascus_core::{PhaseReport, Verdict};
use damascus_forge::{ForgeError, MergeOutcome, PrState};

use crate::process::{self, ProcessEnd, ProcessSpec};
use crate::workspace::Workspace;
use crate::{base_env, fail, forge_for, Inner, PhaseInput};

pub async fn run(inner: &Inner, input: &PhaseInput) -> PhaseReport {
    match review(inner, input).await {
        Ok(verdict) | Err(verdict) => verdict.into(),
    }
}

async fn review(inner: &Inner, input: &PhaseInput) -> Result<Verdict, Verdict> {
    let config = &inner.config;
    let project = &input.project;
    let forge = forge_for(project, config)?;
    let branch = input.item.branch.clone().unwrap_or_else(|| input.branch());
    // The operator's command wins over one that came with the story or from the model:
    // a story must not be able to choose how its own change is judged.
    let test_command = project
        .test_command
        .clone()
        .or_else(|| input.item.test_command.clone())
        .ok_or_else(|| fail("the item has no test command; its spec must name one", ""))?;
    let head = match forge.state(&branch, &project.default_branch).await {
        Ok(PrState::Merged { .. }) => return Ok(Verdict::pass()),
        Ok(PrState::Closed) => {
            return Err(fail(
                format!("the branch {branch} is gone; build it again"),
                "",
            ))
        }
        Ok(PrState::Open { head }) => head,
        Err(e) => return Err(crate::forge_failure("cannot read the pull request", e)),
    };
    let dir = config
        .data_dir
        .join("worktrees")
        .join(&project.name)
        .join(format!("{}-review", input.key()));
    {
        let workspace = Workspace::open(
            &config.data_dir,
            &project.name,
            &project.repository,
            &config.identity,
        )
        .await
        .map_err(|e| Verdict::TransientError {
            reason: format!("cannot fetch the project's repository: {e}"),
        })?;
        workspace
            .detached_worktree(&dir, &head)
            .await
            .map_err(|e| Verdict::TransientError {
                reason: format!("cannot check out {head}: {e}"),
            })?;
    }
    let log_file = config
        .data_dir
        .join("logs")
        .join(input.item.id.to_string())
        .join(format!("review-{}.log", input.job.attempt));
    // The test command runs as written; nothing from the story is put into it.
    let end = process::run(
        ProcessSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), test_command.clone()],
            dir,
            env: base_env(&[]),
            stdin: None,
            timeout: Duration::from_secs(project.test_timeout_secs as u64),
            log_file,
        },
        &input.job.cancel,
    )
    .await
    .map_err(|e| Verdict::TransientError {
        reason: e.to_string(),
    })?;
    match end {
        ProcessEnd::Cancelled => Err(Verdict::TransientError {
            reason: "the review was stopped".into(),
        }),
        ProcessEnd::TimedOut { tail } => Err(fail(
            format!(
                "`{test_command}` ran past its {} s limit and was killed",
                project.test_timeout_secs
            ),
            tail,
        )),
        ProcessEnd::Exited { code: Some(0), .. } => {
            let message = format!("Merge {branch}: {}", input.item.title);
            // One merge per repository at a time, across every worker.
            let lock =
                match damascus_db::operator::try_merge_lock(&input.job.pool, &project.repository)
                    .await
                {
                    Ok(Some(lock)) => lock,
                    Ok(None) => {
                        return Err(Verdict::TransientError {
                            reason: format!(
                                "another merge into {} is running; the merge waits for its lock",
                                project.name
                            ),
                        })
                    }
                    Err(e) => {
                        return Err(Verdict::TransientError {
                            reason: e.to_string(),
                        })
                    }
                };
            let merged = forge
                .merge(&branch, &project.default_branch, &head, &message)
                .await;
            let _ = lock.release().await;
            match merged {
                Ok(outcome) => {
                    let merged_as = match outcome {
                        MergeOutcome::Merged { commit } if !commit.is_empty() => {
                            format!(" as {commit}")
                        }
                        _ => String::new(),
                    };
                    let _ = forge
                        .comment(
                            &branch,
                            &format!(
                                "damascus: `{test_command}` passed on {head}; merged{merged_as}"
                            ),
                        )
                        .await;
                    Ok(Verdict::pass())
                }
                Err(e @ ForgeError::Conflict { .. }) => Err(fail(e.to_string(), "")),
                Err(e) => Err(crate::forge_failure("cannot merge the pull request", e)),
            }
        }
        ProcessEnd::Exited { code, tail, .. } => {
            let _ = forge
                .comment(
                    &branch,
                    &format!("damascus: `{test_command}` failed on {head}"),
                )
                .await;
            Err(fail(
                format!(
                    "`{test_command}` exited with {}",
                    code.map(|c| c.to_string())
                        .unwrap_or_else(|| "a signal".into())
                ),
                tail,
            ))
        }
    }
}
