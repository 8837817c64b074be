//! `jabberfarm status`, `reload`, `drain` and `undrain`: admin requests to the running farm, over each
//! node's farm port, authenticated with the farm secret from the config
//! ([`jabberfarm_net::farm::admin_request`]).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use jabberfarm_config::{FarmConfig, Role, Topology};
use jabberfarm_net::farm::{LINK_NS, admin_request};
use jabberfarm_net::tls;
use jabberfarm_proto::xml::Element;

/// How long a node has to answer `<status/>`.
const STATUS_WAIT: Duration = Duration::from_secs(5);
/// A reload reads the file and hands the table to every node.
const RELOAD_WAIT: Duration = Duration::from_secs(30);

/// The client side of farm-link TLS, when the links use it.
pub(crate) fn link_client(cfg: &FarmConfig) -> Result<Option<Arc<rustls::ClientConfig>>> {
    if !cfg.farm.tls {
        return Ok(None);
    }
    let ca = cfg
        .farm
        .ca
        .as_deref()
        .context("farm.tls needs farm.ca (see `jabberfarm check`)")?;
    Ok(Some(tls::client_config(ca)?))
}

pub async fn reload(cfg: &FarmConfig) -> Result<ExitCode> {
    let answer = ask_master(cfg, &Element::new("reload", LINK_NS), RELOAD_WAIT).await?;
    if answer.is("reloaded", LINK_NS) {
        let get = |name| answer.attr(name).unwrap_or("?");
        if get("changed") == "true" {
            println!(
                "reloaded: topology epoch {}, routing {}, handed to {} node(s)",
                get("epoch"),
                get("fingerprint"),
                get("handed")
            );
        } else {
            println!(
                "reloaded: the routing table and the nodes are unchanged (epoch {}, routing {})",
                get("epoch"),
                get("fingerprint")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if answer.is("reload-refused", LINK_NS) {
        for reason in answer.children() {
            println!("refused: {}", reason.text());
        }
        println!("the config in force stays");
        return Ok(ExitCode::FAILURE);
    }
    anyhow::bail!(
        "the master answered <{}/>: {}",
        answer.name,
        answer.attr("reason").unwrap_or("")
    )
}

/// How long the master has to answer a drain (it hands the topology to every node).
const DRAIN_WAIT: Duration = Duration::from_secs(30);

/// `--over`: seconds (`90`), or a number with `s`, `m` or `h`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: a number of seconds, or with s, m or h (90s, 10m, 1h)"))?;
    let secs = match unit.trim() {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        other => return Err(format!("{text:?}: unknown unit {other:?} (s, m or h)")),
    };
    if secs == 0 {
        return Err("a drain's window must be at least 1 s".to_owned());
    }
    Ok(Duration::from_secs(secs))
}

/// Asks the (primary) master, which hands out every change; what it answered, or an error
/// naming it.
async fn ask_master(cfg: &FarmConfig, request: &Element, wait: Duration) -> Result<Element> {
    let client = link_client(cfg)?;
    let master = cfg.master().name.clone();
    let which = if cfg.masters().count() > 1 {
        "the primary master, which hands out every change"
    } else {
        "the master"
    };
    admin_request(cfg, &master, client.as_ref(), request, wait)
        .await
        .map_err(|e| anyhow::anyhow!("{master} ({which}, {}): {e}", cfg.master().farm))
}

pub async fn drain(
    cfg: &FarmConfig,
    node: &str,
    over: Option<Duration>,
    wait: bool,
) -> Result<ExitCode> {
    let request = Element::new("drain", LINK_NS)
        .with_attr("node", node)
        .with_opt_attr("over", over.map(|o| o.as_secs().to_string()));
    let answer = ask_master(cfg, &request, DRAIN_WAIT).await?;
    if answer.is("drain-refused", LINK_NS) {
        println!(
            "refused: {}",
            answer.attr("reason").unwrap_or("no reason given")
        );
        return Ok(ExitCode::FAILURE);
    }
    if !answer.is("draining", LINK_NS) {
        anyhow::bail!(
            "the master answered <{}/>: {}",
            answer.name,
            answer.attr("reason").unwrap_or("")
        );
    }
    let window = over.map_or_else(
        || format!("at {} user(s) a second", cfg.rebalance.users_per_second),
        |o| format!("over {} s", o.as_secs()),
    );
    println!(
        "draining {node} (topology epoch {}): no new logins; its sessions move to their next slave {window}",
        answer.attr("epoch").unwrap_or("?")
    );
    if !wait {
        println!("`jabberfarm status` says drained once its sessions are gone");
        return Ok(ExitCode::SUCCESS);
    }
    wait_drained(cfg, node, over).await
}

/// Polls `node` until it reports drained (its sessions gone), printing what is left.
async fn wait_drained(cfg: &FarmConfig, node: &str, over: Option<Duration>) -> Result<ExitCode> {
    let client = link_client(cfg)?;
    // The window, and as long again (at the configured rate when there is none), before
    // giving up.
    let patience = over.unwrap_or(Duration::from_secs(600)) * 2 + Duration::from_secs(30);
    let started = std::time::Instant::now();
    let mut said = None;
    loop {
        let request = Element::new("status", LINK_NS);
        match admin_request(cfg, node, client.as_ref(), &request, STATUS_WAIT).await {
            Ok(s) if s.attr("state") == Some("drained") => {
                println!(
                    "{node} is drained ({:.0} s)",
                    started.elapsed().as_secs_f64()
                );
                return Ok(ExitCode::SUCCESS);
            }
            Ok(s) => {
                let left = s.attr("sessions").unwrap_or("?").to_owned();
                if said.as_ref() != Some(&left) {
                    println!("{node}: {left} session(s) left");
                    said = Some(left);
                }
            }
            Err(e) => println!("{node} does not answer: {e}"),
        }
        if started.elapsed() > patience {
            println!(
                "{node} is not drained after {} s: see its log",
                started.elapsed().as_secs()
            );
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub async fn undrain(cfg: &FarmConfig, node: &str) -> Result<ExitCode> {
    let request = Element::new("undrain", LINK_NS).with_attr("node", node);
    let answer = ask_master(cfg, &request, DRAIN_WAIT).await?;
    if !answer.is("undrained", LINK_NS) {
        anyhow::bail!(
            "the master answered <{}/>: {}",
            answer.name,
            answer.attr("reason").unwrap_or("")
        );
    }
    if answer.attr("was") == Some("true") {
        println!(
            "{node} is back in service (topology epoch {}): its users are sent home at {} a second",
            answer.attr("epoch").unwrap_or("?"),
            cfg.rebalance.users_per_second
        );
    } else {
        println!("{node} was not drained: nothing to do");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn status(cfg: Arc<FarmConfig>) -> Result<ExitCode> {
    let client = link_client(&cfg)?;
    // Every node at once: one that does not answer costs its timeout once, not per node.
    let mut asks = tokio::task::JoinSet::new();
    for (i, node) in cfg.nodes.iter().enumerate() {
        let (cfg, client, name) = (cfg.clone(), client.clone(), node.name.clone());
        asks.spawn(async move {
            let request = Element::new("status", LINK_NS);
            let answer = admin_request(&cfg, &name, client.as_ref(), &request, STATUS_WAIT).await;
            (i, answer)
        });
    }
    let mut answers: Vec<_> = asks.join_all().await;
    answers.sort_by_key(|(i, _)| *i);
    let answers: Vec<_> = answers
        .into_iter()
        .map(|(i, answer)| (&cfg.nodes[i], answer))
        .collect();
    // What the master believes of the nodes that do not answer: failed, or just down.
    let master_says = |name: &str| -> Option<bool> {
        answers.iter().find_map(|(n, a)| {
            let s = a.as_ref().ok().filter(|_| n.role == Role::Master)?;
            s.children()
                .find(|l| l.name == "link" && l.attr("node") == Some(name))
                .map(|l| l.attr("failed") == Some("true"))
        })
    };
    println!(
        "{:<12} {:<7} {:<14} {:>6} {:<17} {:>6} {:>7} {:>9} {:>8} {:>7} {:>7}",
        "node",
        "role",
        "state",
        "epoch",
        "routing",
        "links",
        "users",
        "sessions",
        "relayed",
        "moving",
        "queued"
    );
    let mut down = 0;
    let mut tables = std::collections::BTreeSet::new();
    for (node, answer) in &answers {
        match answer {
            Ok(s) => {
                let get = |name| s.attr(name).unwrap_or("-");
                let links: Vec<&Element> = s.children().filter(|c| c.name == "link").collect();
                let up = links
                    .iter()
                    .filter(|l| l.attr("up") == Some("true"))
                    .count();
                let queued: u64 = links
                    .iter()
                    .filter_map(|l| l.attr("queued")?.parse::<u64>().ok())
                    .sum();
                tables.insert((get("epoch").to_owned(), get("fingerprint").to_owned()));
                println!(
                    "{:<12} {:<7} {:<14} {:>6} {:<17} {:>6} {:>7} {:>9} {:>8} {:>7} {:>7}",
                    node.name,
                    get("role"),
                    s.attr("state").unwrap_or("up"),
                    get("epoch"),
                    get("fingerprint"),
                    format!("{up}/{}", links.len()),
                    get("users"),
                    get("sessions"),
                    get("relayed"),
                    get("moving"),
                    queued
                );
            }
            Err(e) => {
                down += 1;
                let state = if master_says(&node.name) == Some(true) {
                    "failed"
                } else {
                    "down"
                };
                println!(
                    "{:<12} {:<7} {:<14} {:>6} {:<17} {:>6} {:>7} {:>9} {:>8} {:>7} {:>7}  ({e})",
                    node.name, node.role, state, "-", "-", "-", "-", "-", "-", "-", "-"
                );
            }
        }
    }
    // Nodes the running topology no longer has but whose links are still up: removed
    // slaves moving their users away before they stop.
    let named = |n: &str| cfg.nodes.iter().any(|c| c.name == n);
    for (node, answer) in &answers {
        let Ok(s) = answer else { continue };
        if node.role != Role::Master {
            continue;
        }
        for link in s.children().filter(|c| c.name == "link") {
            let Some(name) = link.attr("node").filter(|n| !named(n)) else {
                continue;
            };
            println!(
                "{:<12} {:<7} {:<14} {:>6} {:<17} {:>6} {:>7} {:>9} {:>8} {:>7} {:>7}",
                name, "slave", "leaving", "-", "-", "-", "-", "-", "-", "-", "-"
            );
        }
    }
    // What each node that answered believes of the others, when one of them is not up.
    for (node, answer) in &answers {
        let Ok(s) = answer else { continue };
        let views: Vec<String> = s
            .children()
            .filter(|l| l.name == "link")
            .map(|l| {
                let state = match (l.attr("up"), l.attr("failed")) {
                    (Some("true"), _) => "up",
                    (_, Some("true")) => "failed",
                    _ => "down",
                };
                format!("{} {state}", l.attr("node").unwrap_or("?"))
            })
            .collect();
        if views.iter().any(|v| !v.ends_with(" up")) {
            println!("{} sees: {}", node.name, views.join(", "));
        }
    }
    if tables.len() > 1 {
        println!(
            "the nodes do not all run the same topology yet (a change on its way, or a node that refused it: see its log)"
        );
    }
    let file = Topology::of(&cfg);
    if tables.iter().all(|(_, fp)| fp != file.fingerprint()) && !tables.is_empty() {
        println!(
            "the file's routing ({}) is not the one running: `jabberfarm reload` applies it",
            file.fingerprint()
        );
    }
    Ok(if down == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn drain_windows() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("0").unwrap_err().contains("at least 1 s"));
        assert!(parse_duration("5d").unwrap_err().contains("unknown unit"));
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("a number of seconds")
        );
    }
}
