//! `jabberfarm`: the one binary of the farm. See `jabberfarm --help` and README.md.

use std::io::{BufRead, IsTerminal};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use jabberfarm_config::{FarmConfig, NodeConfig, Role, StorageBackend};
use jabberfarm_net::farm::LinkTls;
use jabberfarm_net::tls;
use jabberfarm_proto::routing::normalize_localpart;
use jabberfarm_store::accounts::AccountStore;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

mod admin;
mod import;
mod plan;

/// `--features mimalloc`: 10–20 % less CPU per login and per message, 1.5–3 KiB more per idle
/// session than the system allocator (docs/benchmarks.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_CONFIG: &str = "conf/farm.toml";

/// An XMPP server farm: one master redirects each login to the slave that owns the username;
/// the slaves serve the sessions. One config file describes the whole farm.
#[derive(Parser)]
#[command(name = "jabberfarm", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every node of the config in this process (the demo / development farm).
    ///
    /// With the demo config: a master on 127.0.0.1:5222 and two slaves, SQLite accounts and a
    /// local CA generated into the data dir on first start. Stop with Ctrl-C.
    Up {
        /// The farm config.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Where nodes keep accounts and generated certificates (overrides `data_dir`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run one node of the farm (production: one per machine).
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// The `[[node]]` name to run.
        #[arg(long)]
        node: String,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Manage accounts in the configured store (each user lives on the slave that owns it).
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Print the node that owns each user: `jabberfarm route -c conf/farm.toml alice bob@localhost`.
    Route {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Usernames or JIDs.
        #[arg(required = true)]
        jids: Vec<String>,
    },
    /// What a routing change would move, before anything changes: users from node to node,
    /// the data they take along, how long it takes at `[rebalance] users_per_second`, and what a
    /// running farm would refuse to take. Counted from the stores `--from` describes.
    Plan {
        /// The new config.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The config the farm runs now, to plan from files (its stores are read, never
        /// written). Without it the running farm is asked: the master for the topology in
        /// force, each slave for what the change moves out of its own store.
        #[arg(long)]
        from: Option<PathBuf>,
        /// Overrides `data_dir` of both configs.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// With --from: do not ask the running farm how many of the users who move are
        /// online now.
        #[arg(long, requires = "from")]
        offline: bool,
    },
    /// Ask the master to read its config file again and apply it live (as SIGHUP does):
    /// prints the new epoch, or every reason it refused (exit status 1).
    Reload {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Drain a slave for maintenance: no new logins on it, and its sessions are moved to
    /// their next slave (redirected, or relayed as they logged in), spread over --over; then
    /// `status` says it is drained. Needs central data (MySQL). It stays drained, restarts
    /// included, until `undrain`.
    Drain {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The slave.
        node: String,
        /// Spread the moves over this long (`90`, `90s`, `10m`, `1h`); default: at
        /// `[rebalance] users_per_second`.
        #[arg(long, value_parser = admin::parse_duration)]
        over: Option<std::time::Duration>,
        /// Wait until the slave is drained, printing the sessions left.
        #[arg(long)]
        wait: bool,
    },
    /// Put a drained slave back in service: it takes logins again and its users are sent
    /// home at `[rebalance] users_per_second`.
    Undrain {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        node: String,
    },
    /// The running farm as a table: every node's role, whether it answers, its topology epoch
    /// and routing fingerprint, its links, users and sessions (slaves), relayed clients
    /// (master). Asked over each node's farm port with the farm secret.
    Status {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a config and explain every problem (exit status 1 if there is any).
    Check {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Create an account. The password comes from --password or the first line of stdin.
    Add {
        #[command(flatten)]
        store: StoreArgs,
        /// `name` or `name@domain`.
        jid: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Delete an account.
    Del {
        #[command(flatten)]
        store: StoreArgs,
        jid: String,
    },
    /// Change a password (from --password or the first line of stdin).
    Passwd {
        #[command(flatten)]
        store: StoreArgs,
        jid: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Create many accounts at once from a file (or - for stdin): one `name:password` per
    /// line, '#' comments allowed. Every line is checked first; a bad line imports nothing.
    /// Accounts that exist are left alone unless --update.
    Import {
        #[command(flatten)]
        store: StoreArgs,
        /// The file, or - for stdin.
        file: PathBuf,
        /// Set the password of accounts that already exist.
        #[arg(long)]
        update: bool,
        /// Key derivations at a time (default: the number of cores).
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// List accounts with the node that holds them.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(clap::Args)]
struct StoreArgs {
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("JABBERFARM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jabberfarm: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("jabberfarm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Up { config, data_dir } => {
            let cfg = load(&config, data_dir.as_deref())?;
            let names: Vec<String> = cfg.nodes.iter().map(|n| n.name.clone()).collect();
            run_nodes(cfg, &names, true).await?;
        }
        Command::Run {
            config,
            node,
            data_dir,
        } => {
            let cfg = load(&config, data_dir.as_deref())?;
            if cfg.node(&node).is_none() {
                let known: Vec<&str> = cfg.nodes.iter().map(|n| n.name.as_str()).collect();
                bail!(
                    "{}: no [[node]] named {node:?} (known: {})",
                    config.display(),
                    known.join(", ")
                );
            }
            warn_if_files_short(&cfg);
            run_nodes(cfg, &[node], false).await?;
        }
        Command::User { action } => return user(action).await,
        Command::Route { config, jids } => {
            let cfg = load(&config, None)?;
            let mut code = ExitCode::SUCCESS;
            for j in jids {
                match localpart_of(&cfg, &j) {
                    Ok(l) => println!("{j}\t{}", cfg.routing.owner(&l)),
                    Err(e) => {
                        eprintln!("{j}: {e}");
                        code = ExitCode::FAILURE;
                    }
                }
            }
            return Ok(code);
        }
        Command::Plan {
            config,
            from,
            data_dir,
            json,
            offline,
        } => {
            let new = load(&config, data_dir.as_deref())?;
            let (plan, from) = match from {
                Some(from) => {
                    let old = load(&from, data_dir.as_deref())?;
                    let mut plan = plan::plan(&old, &new).await?;
                    if !offline {
                        plan::count_online(&mut plan, &old, &new).await?;
                    }
                    (plan, from)
                }
                None => {
                    let old = plan::running(&new).await?;
                    let plan = plan::plan_live(&old, &new).await?;
                    (plan, PathBuf::from("the running farm"))
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                plan::print(&plan, &from, &config);
            }
        }
        Command::Reload { config } => return admin::reload(&*load(&config, None)?).await,
        Command::Status { config } => return admin::status(load(&config, None)?).await,
        Command::Drain {
            config,
            node,
            over,
            wait,
        } => return admin::drain(&*load(&config, None)?, &node, over, wait).await,
        Command::Undrain { config, node } => {
            return admin::undrain(&*load(&config, None)?, &node).await;
        }
        Command::Check { config } => {
            return Ok(match FarmConfig::load(&config, None) {
                Ok(cfg) => {
                    let problems = cfg.check_files();
                    if problems.is_empty() {
                        println!(
                            "{}: ok — domain {}, {} node(s), routing fingerprint {}",
                            config.display(),
                            cfg.domain,
                            cfg.nodes.len(),
                            cfg.routing.fingerprint()
                        );
                        println!("failover {}", failover_summary(&cfg));
                        let masters: Vec<&str> = cfg.masters().map(|m| m.name.as_str()).collect();
                        if let [primary, others @ ..] = masters.as_slice()
                            && !others.is_empty()
                        {
                            println!(
                                "masters: {} take logins and remote servers alike; {primary}, \
                                 the primary, hands out changes (reload, drain)",
                                masters.join(", ")
                            );
                        }
                        ExitCode::SUCCESS
                    } else {
                        for p in problems {
                            println!("{}: {p}", config.display());
                        }
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    println!("{e}");
                    ExitCode::FAILURE
                }
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `check` says of failover: on or off, and for ranges mode which ranges have no
/// fallback list.
fn failover_summary(cfg: &FarmConfig) -> String {
    use jabberfarm_proto::routing::RoutingMode;
    if !cfg.storage.central() {
        return "off: the users' data is on their slave (SQLite); a failed slave's users \
                cannot log in until it is back"
            .to_owned();
    }
    if !matches!(cfg.routing.mode(), RoutingMode::Ranges { .. }) {
        return "on: a failed slave's users log in at the next slave of their ranking \
                (central data)"
            .to_owned();
    }
    // The ranges that have nowhere to go whatever the state of the other slaves.
    let bare: Vec<String> = cfg
        .nodes
        .iter()
        .filter(|n| n.role == Role::Slave)
        .flat_map(|n| cfg.routing.stranded(&n.name, |_| true))
        .collect();
    if bare.is_empty() {
        "on: a failed slave's users log in at the first slave of their range's fallback list \
         (central data)"
            .to_owned()
    } else {
        format!(
            "on for ranges with a fallback list; off for {}: no `fallback` (or \
             `other_fallback`), so their users cannot log in while their slave is failed",
            bare.join(", ")
        )
    }
}

fn load(path: &Path, data_dir: Option<&Path>) -> Result<Arc<FarmConfig>> {
    let cfg = FarmConfig::load(path, data_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Arc::new(cfg))
}

/// `name` or `name@domain` → the normalised localpart (the domain must be ours).
pub(crate) fn localpart_of(cfg: &FarmConfig, jid: &str) -> Result<String> {
    let (local, domain) = match jid.split_once('@') {
        Some((l, d)) => (l, Some(d)),
        None => (jid, None),
    };
    if let Some(d) = domain
        && !d.eq_ignore_ascii_case(&cfg.domain)
    {
        bail!("{jid} is not in this farm's domain {}", cfg.domain);
    }
    normalize_localpart(local).map_err(|e| anyhow::anyhow!("invalid username {local:?}: {e}"))
}

/// TLS for every node: the demo CA and certificate when `tls.generate`, else the configured
/// files.
fn tls_setup(cfg: &FarmConfig) -> Result<(Arc<rustls::ServerConfig>, Option<PathBuf>)> {
    if cfg.tls.generate {
        let dir = cfg.tls.ca.parent().unwrap_or(Path::new("."));
        let mut ips: Vec<IpAddr> = Vec::new();
        for n in &cfg.nodes {
            for a in [Some(n.c2s), n.c2s_tls].into_iter().flatten() {
                if !a.ip().is_unspecified() && !ips.contains(&a.ip()) {
                    ips.push(a.ip());
                }
            }
        }
        let certs = tls::ensure_dev_certs(dir, &cfg.domain, &ips)?;
        Ok((tls::server_config(&certs.cert, &certs.key)?, Some(certs.ca)))
    } else {
        Ok((tls::server_config(&cfg.tls.cert, &cfg.tls.key)?, None))
    }
}

/// Files a node needs besides its client connections: listeners, farm links and a master's
/// relay connection to each slave (all its relayed clients share it), s2s streams, SQLite,
/// logs.
const FILES_RESERVE: u64 = 256;

/// Open files a node may need: a file per client connection (relayed or not), and the
/// reserve.
fn files_wanted(cfg: &FarmConfig) -> (u64, String) {
    let conns = cfg.limits.max_connections as u64;
    (
        conns + FILES_RESERVE,
        format!("limits.max_connections ({conns})"),
    )
}

/// A node whose connections do not fit under the process's open-file limit fails accepts
/// ("too many open files") before it reaches its limits: say so at start, with the fix.
fn warn_if_files_short(cfg: &FarmConfig) {
    let Some(soft) = open_files_limit() else {
        return;
    };
    let (wanted, what) = files_wanted(cfg);
    if wanted > soft {
        tracing::warn!(
            "{what} need about {wanted} open files, but this process may open only {soft} \
             files (ulimit -n): connections beyond that will fail; raise the limit (systemd: \
             LimitNOFILE={wanted}) or lower the limits"
        );
    }
}

/// The soft limit on open files, from /proc/self/limits (Linux); `None` elsewhere or when
/// unlimited.
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

async fn run_nodes(cfg: Arc<FarmConfig>, names: &[String], demo: bool) -> Result<()> {
    let problems = cfg.check_files();
    if !problems.is_empty() && !cfg.tls.generate {
        for p in &problems {
            error!("{p}");
        }
        bail!("the config has problems; see `jabberfarm check`");
    }
    let (tls, ca) = tls_setup(&cfg)?;
    let link_tls = if cfg.farm.tls {
        let ca = cfg
            .farm
            .ca
            .as_deref()
            .context("farm.tls needs farm.ca (see `jabberfarm check`)")?;
        Some(LinkTls {
            server: tls.clone(),
            client: tls::client_config(ca)?,
            domain: cfg.domain.clone(),
        })
    } else {
        None
    };
    let shutdown = CancellationToken::new();
    // SIGTERM in a process without the master: its slaves drain first (docs/operations.md).
    let term = CancellationToken::new();
    // Install the handlers before any listener exists, so a SIGTERM is never fatal.
    let mut signals = Signals::install()?;
    let (stop, term2) = (shutdown.clone(), term.clone());
    let has_master = names
        .iter()
        .any(|n| cfg.node(n).is_some_and(|n| n.role == Role::Master));
    let drains = !has_master && !cfg.farm.drain_on_stop.is_zero() && cfg.storage.central();
    // SIGHUP reloads at the primary master only.
    let primary = cfg.master().name.clone();
    let hup = (!names.contains(&primary)).then_some(primary);
    tokio::spawn(async move {
        signals.wait(hup.as_deref()).await;
        if drains {
            info!("stopping: each slave drains first (a second signal stops at once)");
            term2.cancel();
            signals.wait(hup.as_deref()).await;
        }
        info!("stopping: closing every stream with <system-shutdown/>");
        stop.cancel();
    });
    let mut tasks = tokio::task::JoinSet::new();
    for name in names {
        let Some(node) = cfg.node(name).cloned() else {
            continue;
        };
        // Each node stops with the process, or on its own (a slave removed from the farm).
        let (cfg, tls, link_tls, shutdown, node_stop, term) = (
            cfg.clone(),
            Some(tls.clone()),
            link_tls.clone(),
            shutdown.clone(),
            shutdown.child_token(),
            term.clone(),
        );
        tasks.spawn(async move {
            let r = match node.role {
                Role::Master => jabberfarm_master::run(cfg, node.clone(), tls, link_tls, node_stop)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}")),
                Role::Slave => {
                    jabberfarm_slave::run(cfg, node.clone(), tls, link_tls, node_stop, term)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))
                }
            };
            if r.is_err() {
                // One node failing to start takes the others down: no half farms.
                shutdown.cancel();
            }
            r.with_context(|| format!("node {}", node.name))
        });
    }
    // Give the listeners a moment to bind before announcing them.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    if !shutdown.is_cancelled() {
        print_banner(&cfg, names, ca.as_deref(), demo);
    }
    let mut result = Ok(());
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                if result.is_ok() {
                    result = Err(e);
                }
            }
            Err(e) => {
                shutdown.cancel();
                if result.is_ok() {
                    result = Err(anyhow::anyhow!("a node crashed: {e}"));
                }
            }
        }
    }
    result
}

/// SIGTERM and SIGINT (Ctrl-C) both mean "stop gracefully". SIGHUP means "reload": the
/// master does it (and hands the change to every node); a process without the master says so
/// and goes on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    /// Until SIGTERM or SIGINT. `primary`: the primary master when this process does not run
    /// it (a SIGHUP here is then only logged).
    async fn wait(&mut self, primary: Option<&str>) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => if let Some(primary) = primary {
                    tracing::warn!(
                        "SIGHUP: this process does not run the primary master; send it to \
                         {primary}, which reloads the config and hands the change to every node"
                    );
                },
            }
        }
    }
}

fn print_banner(cfg: &FarmConfig, names: &[String], ca: Option<&Path>, demo: bool) {
    let nodes: Vec<&NodeConfig> = cfg
        .nodes
        .iter()
        .filter(|n| names.contains(&n.name))
        .collect();
    println!(
        "jabberfarm: serving {} (routing fingerprint {})",
        cfg.domain,
        cfg.routing.fingerprint()
    );
    for n in &nodes {
        let tls = n
            .c2s_tls
            .map(|a| format!(", direct TLS {a}"))
            .unwrap_or_default();
        println!(
            "  {:<8} {:<6} c2s {}{tls}, advertised as {}",
            n.name,
            n.role.to_string(),
            n.c2s,
            n.advertise
        );
    }
    if nodes.iter().any(|n| n.role == Role::Master) {
        let m = cfg.master();
        let how = match m.redirect_mode(&cfg.relay, false) {
            jabberfarm_config::RedirectMode::Always => "it is redirected to its slave",
            jabberfarm_config::RedirectMode::Never => "the master relays it to its slave",
            jabberfarm_config::RedirectMode::Auto => {
                "it is redirected to its slave, or relayed there if it does not follow redirects"
            }
        };
        println!(
            "Connect your XMPP client to {} at {} (user@{}); {how}.",
            cfg.domain, m.c2s, cfg.domain
        );
    }
    if let Some(ca) = ca {
        println!("TLS: trust the demo CA {} in your client.", ca.display());
    }
    if demo {
        println!(
            "Add a user:  jabberfarm user add --config {} --data-dir {} alice@{} --password secret",
            cfg.source.display(),
            cfg.data_dir.display(),
            cfg.domain
        );
    }
    println!("Stop with Ctrl-C (or SIGTERM).");
}

fn read_password(given: Option<String>) -> Result<String> {
    if let Some(p) = given {
        return Ok(p);
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password: ");
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let p = line.trim_end_matches(['\r', '\n']).to_owned();
    if p.is_empty() {
        bail!("empty password (give --password or a line on stdin)");
    }
    Ok(p)
}

/// The account store of `node` as configured: its SQLite file, or the farm's central
/// database or directory (the same for every node).
pub(crate) async fn open_store(cfg: &FarmConfig, node: &str) -> Result<AccountStore> {
    AccountStore::open(&cfg.storage, &cfg.data_dir, node)
        .await
        .with_context(|| format!("account store of {node}"))
}

async fn user(action: UserAction) -> Result<ExitCode> {
    let (args, jid) = match &action {
        UserAction::Add { store, jid, .. }
        | UserAction::Del { store, jid }
        | UserAction::Passwd { store, jid, .. } => (store, Some(jid.as_str())),
        UserAction::List { store } | UserAction::Import { store, .. } => (store, None),
    };
    let cfg = load(&args.config, args.data_dir.as_deref())?;
    // A directory or an existing user table: jabberfarm reads accounts there, never writes.
    let elsewhere = cfg.storage.accounts_managed_elsewhere();
    if let (Some(why), false) = (elsewhere, matches!(action, UserAction::Del { .. })) {
        bail!("{why}; `jabberfarm user del` only removes a user's IM data here");
    }
    // One SQLite file per slave, or one central database for all.
    let per_node = matches!(cfg.storage.backend, StorageBackend::Sqlite { .. });
    if let UserAction::Import {
        file, update, jobs, ..
    } = &action
    {
        let jobs = jobs.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
        });
        return import::import(&cfg, file, *update, jobs).await;
    }
    let Some(jid) = jid else {
        let nodes: Vec<&str> = cfg.slaves().map(|n| n.name.as_str()).collect();
        let files = if per_node {
            &nodes[..]
        } else {
            &nodes[..1.min(nodes.len())]
        };
        for node in files {
            let store = open_store(&cfg, node).await?;
            let users = store.list_users().await;
            store.close().await;
            for u in users? {
                // Per-node files: where it is; central: who serves it now.
                let at = if per_node {
                    node
                } else {
                    cfg.routing.owner(&u)
                };
                println!("{u}@{}\t{at}", cfg.domain);
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    let local = localpart_of(&cfg, jid)?;
    let new_password = match &action {
        UserAction::Add { password, .. } | UserAction::Passwd { password, .. } => {
            read_password(password.clone())?
        }
        UserAction::Del { .. } | UserAction::List { .. } | UserAction::Import { .. } => {
            String::new()
        }
    };
    let owner = cfg.routing.owner(&local).to_owned();
    let store = open_store(&cfg, &owner).await?;
    let iterations = cfg.storage.scram_iterations;
    let im = jabberfarm_store::im::ImStore::for_accounts(&store);
    let r = match action {
        UserAction::Add { .. } => store
            .add_user(&local, &new_password, iterations)
            .await
            .map(|_| "added".to_owned()),
        UserAction::Passwd { .. } => store
            .set_password(&local, &new_password, iterations)
            .await
            .map(|_| "password changed".to_owned()),
        UserAction::Del { .. } => match elsewhere {
            Some(why) => im
                .delete_user(&local)
                .await
                .map(|_| format!("roster, offline messages and vCard deleted; the account: {why}")),
            // Roster, offline messages and vCard go with the account.
            None => match store.delete_user(&local).await {
                Ok(()) => im.delete_user(&local).await.map(|_| "deleted".to_owned()),
                Err(e) => Err(e),
            },
        },
        UserAction::List { .. } | UserAction::Import { .. } => Ok(String::new()),
    };
    store.close().await;
    let done = r?;
    let at = if per_node { "on" } else { "served by" };
    println!("{local}@{}: {done} ({at} {owner})", cfg.domain);
    Ok(ExitCode::SUCCESS)
}
