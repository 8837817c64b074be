//! `jabberfarm plan --config NEW --from OLD`: what a routing change would do, before anything
//! changes (issue 13; docs/rebalancing.md). Counted from the stores, not estimated: every user
//! the old config's stores hold, where it is now, where the new table puts it, and what it
//! keeps (roster items, pending subscription requests, offline messages, vCard) when its data
//! lives on the slaves and would be copied.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, Result};
use jabberfarm_config::{FarmConfig, StorageBackend, live_change_refusals};
use jabberfarm_store::im::{Holding, ImStore};
use serde::Serialize;

use jabberfarm_net::farm::{LINK_NS, admin_request};
use jabberfarm_proto::xml::Element;

use crate::open_store;

/// Everything `plan` found, as printed (text) or serialised (`--json`).
#[derive(Debug, Serialize)]
pub struct Plan {
    pub from_fingerprint: String,
    pub to_fingerprint: String,
    /// What was counted: `accounts`, or `known users` when accounts live in a directory.
    pub counted: &'static str,
    pub users: u64,
    /// Data lives in each slave's own file and moves with its user; else it is central.
    pub data_moves: bool,
    pub moves: Vec<Move>,
    /// Users who stay where they are, by node.
    pub stay: BTreeMap<String, u64>,
    /// Slaves the new config adds (they take their share) and removes (emptied first).
    pub joining: Vec<String>,
    pub leaving: Vec<String>,
    /// Users whose data sits on a node that the old table does not give them to (a change
    /// that was not finished): they move too, to their new owner.
    pub misplaced: u64,
    /// `[rebalance] users_per_second` of the new config.
    pub users_per_second: u32,
    /// Time for the move at that rate: the node with most users to hand over sets it.
    pub seconds: f64,
    /// What a running farm would refuse to take from the new config, and why.
    pub refused: Vec<String>,
    /// The slaves that counted their online users for the `online` column, and the ones
    /// that did not answer (with why): empty both for a plan that did not ask (`--offline`).
    pub online_from: Vec<String>,
    pub online_missing: Vec<String>,
}

/// The users that go from one node to another, and what they take along.
#[derive(Debug, Default, Serialize)]
pub struct Move {
    pub from: String,
    pub to: String,
    pub users: u64,
    /// Online now: only the running farm knows; an offline plan says null.
    pub online: Option<u64>,
    pub roster_items: u64,
    pub pending_in: u64,
    pub offline_messages: u64,
    pub vcards: u64,
    pub bytes: u64,
}

/// Whether each slave keeps its users' data in its own file (so data moves with them).
fn data_on_slaves(cfg: &FarmConfig) -> bool {
    cfg.slaves()
        .any(|n| cfg.storage.sqlite_path(&cfg.data_dir, &n.name).is_some())
}

/// The config the running farm runs, as far as a plan needs it: `new` with the master's
/// topology in force (its table and nodes), asked over the master's farm port.
pub async fn running(new: &FarmConfig) -> Result<FarmConfig> {
    let client = crate::admin::link_client(new)?;
    let master = new.master().name.clone();
    let answer = admin_request(
        new,
        &master,
        client.as_ref(),
        &Element::new("topology", LINK_NS),
        ONLINE_WAIT,
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{master} (the master, {}) does not answer: {e}; plan from files with --from OLD",
            new.master().farm
        )
    })?;
    let t = jabberfarm_config::Topology::from_element(&answer)
        .map_err(|e| anyhow::anyhow!("{master} answered a topology that does not read: {e}"))?;
    let mut old = new.clone();
    old.routing = t.table;
    old.nodes = t.nodes;
    Ok(old)
}

/// The plan asked of the running farm (`running`) when the data is on the slaves: each slave
/// counts what `to` moves out of its own file, and who of those is online
/// (`<plan-count/>`). A slave that does not answer is named in [`Plan::online_missing`].
pub async fn plan_live(from: &FarmConfig, to: &FarmConfig) -> Result<Plan> {
    if !data_on_slaves(from) {
        let mut plan = plan(from, to).await?;
        count_online(&mut plan, from, to).await?;
        return Ok(plan);
    }
    let mut plan = empty(from, to, true);
    let client = crate::admin::link_client(from)?;
    let request = with_table("plan-count", to);
    let mut moves: BTreeMap<(String, String), Move> = BTreeMap::new();
    for slave in from.slaves() {
        let answer = ask(from, &slave.name, client.as_ref(), &request, COUNT_WAIT).await;
        let a = match answer {
            Ok(a) => a,
            Err(e) => {
                plan.online_missing.push(format!("{} ({e})", slave.name));
                continue;
            }
        };
        let num = |el: &Element, name: &str| -> u64 {
            el.attr(name).and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        let stay = num(&a, "stay");
        plan.users += stay;
        plan.misplaced += num(&a, "misplaced");
        if stay > 0 {
            plan.stay.insert(slave.name.clone(), stay);
        }
        for m in a.children() {
            let next = m.attr("to").unwrap_or("?").to_owned();
            let users = num(m, "users");
            plan.users += users;
            moves.insert(
                (slave.name.clone(), next.clone()),
                Move {
                    from: slave.name.clone(),
                    to: next,
                    users,
                    online: Some(num(m, "online")),
                    roster_items: num(m, "roster"),
                    pending_in: num(m, "pending"),
                    offline_messages: num(m, "offline"),
                    vcards: num(m, "vcards"),
                    bytes: num(m, "bytes"),
                },
            );
        }
        plan.online_from.push(slave.name.clone());
    }
    plan.moves = moves.into_values().collect();
    finish(&mut plan);
    Ok(plan)
}

/// A plan with nothing counted yet.
fn empty(from: &FarmConfig, to: &FarmConfig, data_moves: bool) -> Plan {
    let counted = match from.storage.backend {
        StorageBackend::Ldap(_) => "known users",
        _ if from.storage.accounts_managed_elsewhere().is_some() => "known users",
        _ => "accounts",
    };
    Plan {
        from_fingerprint: from.routing.fingerprint().to_owned(),
        to_fingerprint: to.routing.fingerprint().to_owned(),
        counted,
        users: 0,
        data_moves,
        moves: Vec::new(),
        stay: BTreeMap::new(),
        joining: names_missing(to, from),
        leaving: names_missing(from, to),
        misplaced: 0,
        users_per_second: to.rebalance.users_per_second,
        seconds: 0.0,
        refused: live_change_refusals(from, to),
        online_from: Vec::new(),
        online_missing: Vec::new(),
    }
}

/// The time the moves take at the rate: the node with the most users to hand over sets it.
fn finish(plan: &mut Plan) {
    let mut out_of: BTreeMap<&str, u64> = BTreeMap::new();
    for m in &plan.moves {
        *out_of.entry(&m.from).or_default() += m.users;
    }
    let busiest = out_of.values().copied().max().unwrap_or(0);
    plan.seconds = busiest as f64 / f64::from(plan.users_per_second.max(1));
}

/// Counts the users of `from`'s stores and where `to` puts them.
pub async fn plan(from: &FarmConfig, to: &FarmConfig) -> Result<Plan> {
    let data_moves = data_on_slaves(from);
    let mut plan = empty(from, to, data_moves);
    let mut moves: BTreeMap<(String, String), Move> = BTreeMap::new();
    // Per-node files: each slave's own; central: one store, read once.
    let sources: Vec<&str> = if data_moves {
        from.slaves().map(|n| n.name.as_str()).collect()
    } else {
        from.slaves().map(|n| n.name.as_str()).take(1).collect()
    };
    for node in sources {
        if let Some(path) = from.storage.sqlite_path(&from.data_dir, node)
            && !path.exists()
        {
            // Never create a store to count it: a slave that never ran holds nobody.
            continue;
        }
        let (users, holdings) = read_users(from, node).await?;
        for user in users {
            plan.users += 1;
            let now = if data_moves {
                node
            } else {
                from.routing.owner(&user)
            };
            if data_moves && from.routing.owner(&user) != node {
                plan.misplaced += 1;
            }
            let next = to.routing.owner(&user);
            if now == next {
                *plan.stay.entry(now.to_owned()).or_default() += 1;
                continue;
            }
            let m = moves
                .entry((now.to_owned(), next.to_owned()))
                .or_insert_with(|| Move {
                    from: now.to_owned(),
                    to: next.to_owned(),
                    ..Move::default()
                });
            m.users += 1;
            if let Some(h) = holdings.as_ref().and_then(|all| all.get(&user)) {
                m.roster_items += h.roster_items;
                m.pending_in += h.pending_in;
                m.offline_messages += h.offline_messages;
                m.vcards += u64::from(h.vcard);
                m.bytes += h.bytes;
            }
        }
    }
    plan.moves = moves.into_values().collect();
    finish(&mut plan);
    Ok(plan)
}

/// Asks every slave of the running farm (`from`, the config it runs) how many of its users
/// online now `to` would move, and where: the `online` column. A slave that does not answer
/// leaves its moves at `-`, named in [`Plan::online_missing`].
pub async fn count_online(plan: &mut Plan, from: &FarmConfig, to: &FarmConfig) -> Result<()> {
    let client = crate::admin::link_client(from)?;
    let request = with_table("online-moves", to);
    for slave in from.slaves() {
        let answer = ask(from, &slave.name, client.as_ref(), &request, ONLINE_WAIT).await;
        match answer {
            Ok(a) => {
                for m in plan.moves.iter_mut().filter(|m| m.from == slave.name) {
                    let n = a
                        .children()
                        .find(|c| c.attr("to") == Some(&m.to))
                        .and_then(|c| c.attr("users")?.parse().ok())
                        .unwrap_or(0);
                    m.online = Some(n);
                }
                plan.online_from.push(slave.name.clone());
            }
            Err(e) => plan.online_missing.push(format!("{} ({e})", slave.name)),
        }
    }
    Ok(())
}

/// A plan's question to a slave: `<name>` with the topology of `to` inside.
fn with_table(name: &'static str, to: &FarmConfig) -> Element {
    Element::new(name, LINK_NS).with_child(jabberfarm_config::Topology::of(to).to_element())
}

/// `request` to `node` of `cfg`: its answer, an element of the request's own name; the
/// node's `error` attribute, or any other answer, is an error.
async fn ask(
    cfg: &FarmConfig,
    node: &str,
    client: Option<&std::sync::Arc<rustls::ClientConfig>>,
    request: &Element,
    wait: std::time::Duration,
) -> Result<Element, String> {
    let a = admin_request(cfg, node, client, request, wait).await?;
    match a.attr("error") {
        Some(e) => Err(e.to_owned()),
        None if a.is(&request.name, LINK_NS) => Ok(a),
        None => Err(format!("answered <{}/>", a.name)),
    }
}

/// How long a slave has to count its online users (and the master to say its topology).
const ONLINE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
/// How long a slave has to count the users of its file.
const COUNT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The users `node`'s store holds, sorted, and what each keeps when data is per node.
async fn read_users(
    cfg: &FarmConfig,
    node: &str,
) -> Result<(Vec<String>, Option<BTreeMap<String, Holding>>)> {
    let store = open_store(cfg, node).await?;
    let im = ImStore::for_accounts(&store);
    let read = async {
        let users = if cfg.storage.accounts_managed_elsewhere().is_some() {
            im.known_users().await?
        } else {
            store.list_users().await?
        };
        let holdings = im.holdings().await?;
        Ok::<_, jabberfarm_store::accounts::StoreError>((users, holdings))
    };
    let result = read.await;
    store.close().await;
    result.with_context(|| format!("reading the users of {node}"))
}

/// Slaves of `a` that `b` does not have.
fn names_missing(a: &FarmConfig, b: &FarmConfig) -> Vec<String> {
    a.slaves()
        .filter(|n| !b.slaves().any(|m| m.name == n.name))
        .map(|n| n.name.clone())
        .collect()
}

/// The plan as an admin reads it.
pub fn print(plan: &Plan, from: &Path, to: &Path) {
    println!(
        "routing {} ({}) → {} ({})",
        plan.from_fingerprint,
        from.display(),
        plan.to_fingerprint,
        to.display()
    );
    let moving: u64 = plan.moves.iter().map(|m| m.users).sum();
    let share = if plan.users == 0 {
        0.0
    } else {
        100.0 * moving as f64 / plan.users as f64
    };
    println!(
        "{} {}: {moving} move ({share:.1} %), {} stay",
        plan.users,
        plan.counted,
        plan.users - moving
    );
    if plan.data_moves {
        println!(
            "data lives on the slaves (one SQLite file each): roster, pending requests, offline \
             messages and vCard are copied with each user"
        );
    } else {
        println!("data is central: nothing is copied, only sessions move");
    }
    if !plan.joining.is_empty() {
        println!("joining: {} (takes its share)", plan.joining.join(", "));
    }
    if !plan.leaving.is_empty() {
        println!(
            "leaving: {} (emptied: every user moves)",
            plan.leaving.join(", ")
        );
    }
    if plan.misplaced > 0 {
        println!(
            "{} users are on a node the old table does not give them to (an unfinished \
             change); they move to their new owner too",
            plan.misplaced
        );
    }
    if !plan.moves.is_empty() {
        println!();
        println!(
            "{:<12} {:<12} {:>8} {:>7} {:>8} {:>8} {:>8} {:>7} {:>10}",
            "from", "to", "users", "online", "roster", "pending", "offline", "vcards", "bytes"
        );
        for m in &plan.moves {
            println!(
                "{:<12} {:<12} {:>8} {:>7} {:>8} {:>8} {:>8} {:>7} {:>10}",
                m.from,
                m.to,
                m.users,
                m.online.map_or("-".to_owned(), |n| n.to_string()),
                m.roster_items,
                m.pending_in,
                m.offline_messages,
                m.vcards,
                m.bytes
            );
        }
        println!();
    }
    let stay: Vec<String> = plan.stay.iter().map(|(n, c)| format!("{n} {c}")).collect();
    if !stay.is_empty() {
        println!("stay: {}", stay.join(", "));
    }
    println!(
        "time at {} users/s per node ([rebalance] users_per_second): {:.0} s",
        plan.users_per_second,
        plan.seconds.ceil()
    );
    match (plan.online_from.is_empty(), plan.online_missing.is_empty()) {
        (true, true) => println!("online now: not asked (--offline)"),
        (false, true) => println!(
            "online now: counted by the running farm ({})",
            plan.online_from.join(", ")
        ),
        (_, false) => println!(
            "online now: not counted where `-`: {} did not answer",
            plan.online_missing.join("; ")
        ),
    }
    for r in &plan.refused {
        println!("refused live: {r}");
    }
}
