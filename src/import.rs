//! `jabberfarm user import`: many accounts at once, for migrations and benchmarks.
//!
//! Input: one account per line, `name:password` or `name@domain:password` (a localpart never
//! contains ':' or '@', RFC 7622 §3.3.1, so the first ':' after the name ends it; the password
//! is the rest of the line, colons included). Empty lines and lines starting with '#' are
//! skipped. Every line is checked before anything is written, so a file with a bad line
//! changes nothing. Key derivation (PBKDF2, twice per account) runs on all cores.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use jabberfarm_config::{FarmConfig, StorageBackend};
use jabberfarm_store::accounts::{AccountStore, StoreError};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Longest accepted line (name, ':' and password), bytes.
const MAX_LINE: usize = 4096;
/// Errors printed one by one; the rest are counted.
const SHOWN_ERRORS: usize = 20;

/// One parsed line.
struct Entry {
    line: usize,
    local: String,
    password: String,
}

#[derive(Default)]
struct Tally {
    added: u64,
    updated: u64,
    existing: u64,
    failed: Vec<String>,
}

pub async fn import(cfg: &FarmConfig, input: &Path, update: bool, jobs: usize) -> Result<ExitCode> {
    let reader: Box<dyn BufRead> = if input == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(input).with_context(|| format!("{}", input.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let entries = parse(cfg, reader, &input.display().to_string())?;
    if entries.is_empty() {
        println!("nothing to import");
        return Ok(ExitCode::SUCCESS);
    }
    // One SQLite file per slave: each account goes to its owner's. Central: one store.
    let per_node = matches!(cfg.storage.backend, StorageBackend::Sqlite { .. });
    let mut by_store: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    for e in entries {
        let node = if per_node {
            cfg.routing.owner(&e.local).to_owned()
        } else {
            cfg.slaves()
                .next()
                .map(|n| n.name.clone())
                .context("the config has no slave")?
        };
        by_store.entry(node).or_default().push(e);
    }
    let mut total = Tally::default();
    for (node, entries) in by_store {
        let store = crate::open_store(cfg, &node).await?;
        let n = entries.len();
        // Known accounts are skipped before their keys are derived (the costly part).
        let (entries, existing) = if update {
            (entries, 0)
        } else {
            let known: std::collections::HashSet<String> =
                store.list_users().await?.into_iter().collect();
            let before = entries.len();
            let fresh: Vec<Entry> = entries
                .into_iter()
                .filter(|e| !known.contains(&e.local))
                .collect();
            let existing = (before - fresh.len()) as u64;
            (fresh, existing)
        };
        let mut t = import_into(&store, entries, cfg.storage.scram_iterations, update, jobs).await;
        store.close().await;
        t.existing += existing;
        let at = if per_node { "on" } else { "through" };
        println!(
            "{at} {node}: {n} lines, {} added, {} updated, {} already there, {} failed",
            t.added,
            t.updated,
            t.existing,
            t.failed.len()
        );
        total.added += t.added;
        total.updated += t.updated;
        total.existing += t.existing;
        total.failed.extend(t.failed);
    }
    let failed = total.failed.len();
    for f in total.failed.iter().take(SHOWN_ERRORS) {
        eprintln!("{f}");
    }
    if failed > SHOWN_ERRORS {
        eprintln!("… and {} more failures", failed - SHOWN_ERRORS);
    }
    println!(
        "imported: {} added, {} updated, {} already there{}, {failed} failed",
        total.added,
        total.updated,
        total.existing,
        if update || total.existing == 0 {
            ""
        } else {
            " (left alone; --update sets their passwords)"
        }
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Every line checked before anything is written: a bad line is reported with its number
/// (never its password) and nothing is imported.
fn parse(cfg: &FarmConfig, reader: Box<dyn BufRead>, name: &str) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, line) in reader.lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("{name}: reading line {n}"))?;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if line.len() > MAX_LINE {
            errors.push(format!("{name}:{n}: longer than {MAX_LINE} bytes"));
            continue;
        }
        let Some((who, password)) = line.split_once(':') else {
            errors.push(format!("{name}:{n}: expected name:password"));
            continue;
        };
        if password.is_empty() {
            errors.push(format!("{name}:{n}: empty password for {who:?}"));
            continue;
        }
        match crate::localpart_of(cfg, who.trim()) {
            Ok(local) if !seen.insert(local.clone()) => {
                errors.push(format!("{name}:{n}: {local} appears twice"));
            }
            Ok(local) => entries.push(Entry {
                line: n,
                local,
                password: password.to_owned(),
            }),
            Err(e) => errors.push(format!("{name}:{n}: {e}")),
        }
    }
    if !errors.is_empty() {
        for e in errors.iter().take(SHOWN_ERRORS) {
            eprintln!("{e}");
        }
        if errors.len() > SHOWN_ERRORS {
            eprintln!("… and {} more", errors.len() - SHOWN_ERRORS);
        }
        bail!(
            "{name}: {} bad line(s); nothing imported (format: one name:password per line)",
            errors.len()
        );
    }
    Ok(entries)
}

/// Adds (or with `update` re-keys) the accounts, `jobs` at a time.
async fn import_into(
    store: &AccountStore,
    entries: Vec<Entry>,
    iterations: u32,
    update: bool,
    jobs: usize,
) -> Tally {
    let permits = Arc::new(Semaphore::new(jobs.max(1)));
    let mut set = JoinSet::new();
    let mut tally = Tally::default();
    for e in entries {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let store = store.clone();
        set.spawn(async move {
            let _permit = permit;
            let r = match store.add_user(&e.local, &e.password, iterations).await {
                Err(StoreError::Exists(_)) if update => store
                    .set_password(&e.local, &e.password, iterations)
                    .await
                    .map(|()| Outcome::Updated),
                Err(StoreError::Exists(_)) => Ok(Outcome::Existing),
                r => r.map(|()| Outcome::Added),
            };
            r.map_err(|err| format!("line {} ({}): {err}", e.line, e.local))
        });
        // Collect as we go, so finished tasks don't pile up.
        while let Some(done) = set.try_join_next() {
            count(&mut tally, done);
        }
    }
    while let Some(done) = set.join_next().await {
        count(&mut tally, done);
    }
    tally
}

enum Outcome {
    Added,
    Updated,
    Existing,
}

fn count(t: &mut Tally, done: Result<Result<Outcome, String>, tokio::task::JoinError>) {
    match done {
        Ok(Ok(Outcome::Added)) => t.added += 1,
        Ok(Ok(Outcome::Updated)) => t.updated += 1,
        Ok(Ok(Outcome::Existing)) => t.existing += 1,
        Ok(Err(e)) => t.failed.push(e),
        Err(e) => t.failed.push(format!("import task failed: {e}")),
    }
}
