//! `damascus items` and `damascus show`; with `--json`, the API's documents
//! (`damascus_api::views`).

use damascus_db::items::{self, ItemFilter};
use damascus_db::{events, Target};

use crate::cli::ItemsArgs;
use crate::commands::{open_migrated, print_json};
use crate::table;

pub async fn list(target: &Target, args: ItemsArgs) -> anyhow::Result<()> {
    let db = open_migrated(target).await?;
    let filter = ItemFilter {
        project: args.project,
        phase: args.phase,
        limit: args.limit,
        offset: args.offset,
        ..ItemFilter::default()
    };
    if args.json {
        return print_json(&damascus_api::views::item_page(&db.pool, &filter).await?);
    }
    let list = items::list_items(&db.pool, &filter).await?;
    if list.is_empty() {
        println!("no items match; add one with: damascus ingest --project NAME story.md");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            vec![
                i.id.to_string(),
                i.project.clone(),
                i.phase.to_string(),
                format!("{}/{}", i.attempts_total, i.max_attempts_total),
                format!("{:.2}", i.cost_usd),
                i.title.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &["ID", "PROJECT", "PHASE", "ATTEMPTS", "USD", "TITLE"],
            &rows
        )
    );
    Ok(())
}

pub async fn show(target: &Target, id: i64, json: bool) -> anyhow::Result<()> {
    let db = open_migrated(target).await?;
    if json {
        return print_json(&damascus_api::views::item_detail(&db.pool, id).await?);
    }
    let item = items::get_item(&db.pool, id).await?;
    println!("item {}: {}", item.id, item.title);
    println!("project    {}", item.project);
    match item.resume_phase {
        Some(resume) => println!("phase      {} (resumes in {resume})", item.phase),
        None => println!(
            "phase      {} since {}",
            item.phase,
            item.phase_entered_at.format("%Y-%m-%d %H:%M:%S UTC")
        ),
    }
    if let Some(q) = damascus_db::merge_queue::entry(&db.pool, id).await? {
        let batch = match q.batch_head {
            Some(head) if head != id => format!(", in the batch of item {head}"),
            _ => String::new(),
        };
        println!(
            "queue      {} of {} into {} {}: {} since {}{batch}",
            q.position,
            q.length,
            q.repository,
            q.base_branch,
            q.state,
            q.state_since.format("%H:%M:%S UTC")
        );
    }
    if let Some(wait) = items::waiting(&db.pool, id).await? {
        println!(
            "waiting    until {}: {}",
            wait.until.format("%H:%M:%S UTC"),
            wait.reason
        );
    }
    println!(
        "attempts   {} in this phase (of {}), {} in all (of {})",
        item.phase_attempts,
        item.max_attempts_per_phase,
        item.attempts_total,
        item.max_attempts_total
    );
    let budget = item
        .cost_budget_usd
        .map(|b| format!(" of {b:.2}"))
        .unwrap_or_default();
    println!("cost       {:.4} USD{budget}", item.cost_usd);
    if let Some(verdict) = item.last_verdict {
        println!(
            "verdict    {verdict}{}",
            item.last_verdict_reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
    for (label, value) in [
        ("test", &item.test_command),
        ("branch", &item.branch),
        ("pr", &item.pr_url),
    ] {
        if let Some(value) = value {
            println!("{label:<10} {value}");
        }
    }
    println!(
        "created    {} (from {})",
        item.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
        item.source
    );
    if !item.body.is_empty() {
        println!("\n{}", item.body);
    }
    if let Some(spec) = &item.spec {
        println!("\nspec\n{}", serde_json::to_string_pretty(spec)?);
    }
    let gates = items::gates_for_item(&db.pool, id).await?;
    if !gates.is_empty() {
        println!("\ngates");
        for gate in &gates {
            let what = match (gate.depends_on_item_id, &gate.lock_name) {
                (Some(other), _) => format!("depends on item {other}"),
                (None, Some(lock)) => format!("lock {lock}"),
                (None, None) => gate.kind.replace('_', " "),
            };
            let state = match (gate.lock_name.is_some(), gate.open) {
                (true, true) => "held",
                (true, false) => "not held",
                (false, true) => "open",
                (false, false) => "closed",
            };
            println!(
                "  {what}: {state}{}",
                gate.opened_by
                    .as_deref()
                    .map(|b| format!(" ({b})"))
                    .unwrap_or_default()
            );
        }
    }
    let questions = items::human_issues_for_item(&db.pool, id).await?;
    if !questions.is_empty() {
        println!("\nquestions");
        for q in &questions {
            println!("  #{} [{}] ({}) {}", q.id, q.status, q.phase, q.question);
            if q.status == damascus_core::HumanIssueStatus::Open {
                println!(
                    "      {}",
                    damascus_core::answer_hint(q.item_id, q.phase, q.on_answer)
                );
            }
            if let Some(answer) = &q.answer {
                println!("      answer: {answer}");
            }
        }
    }
    let costs = items::costs_for_item(&db.pool, id).await?;
    if !costs.is_empty() {
        println!("\ncosts");
        for c in &costs {
            let cached = if c.tokens_cached > 0 {
                format!(" ({} cached)", c.tokens_cached)
            } else {
                String::new()
            };
            println!(
                "  {:<7} {:<24} {} calls, {} in{cached} / {} out tokens, {:.4} USD",
                c.phase, c.model, c.calls, c.tokens_in, c.tokens_out, c.usd
            );
            if let Some(price) = &c.price {
                println!("          priced: {price}");
            }
        }
    }
    println!("\nevents");
    for event in events::for_item(&db.pool, id).await? {
        println!(
            "  {} {} {}",
            event.created_at.format("%Y-%m-%d %H:%M:%S"),
            event.kind,
            event.payload
        );
    }
    Ok(())
}
