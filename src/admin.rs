//! `jabberfarm status` and `jabberfarm reload`: admin requests to the running farm, over each
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
    let client = link_client(cfg)?;
    let master = cfg.master().name.clone();
    let request = Element::new("reload", LINK_NS);
    let answer = admin_request(cfg, &master, client.as_ref(), &request, RELOAD_WAIT)
        .await
        .map_err(|e| anyhow::anyhow!("{master} (the master, {}): {e}", cfg.master().farm))?;
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
        "{master} answered <{}/>: {}",
        answer.name,
        answer.attr("reason").unwrap_or("")
    )
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
