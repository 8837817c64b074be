//! `jabberfarm-bench`: a load generator for XMPP servers — jabberfarm, Prosody, ejabberd —
//! speaking only standard XMPP over TCP (optionally STARTTLS), thousands of clients in one
//! process. Loopback targets only; every run is bounded in count and time.
//!
//! Modules: [`client`] (the XMPP client: stream, STARTTLS, SASL, redirects, bind),
//! [`scram`] (client SCRAM), [`target`] (the loopback rule), [`runner`] (bounded worker
//! pool), [`measure`] (percentiles, /proc CPU and RSS), [`report`] (table and JSON),
//! [`scenario`] (`redirect`, `login`, `idle`, `chat`, `floor`, `pbkdf2`).
//!
//! Data flow of a run: CLI → [`scenario::Ctx`] → unmeasured discovery (which server serves
//! each user) → measured phase on the worker pool, bracketed by /proc samples of the server
//! → [`report::Report`] → table on stdout, JSON to `--json`.

mod client;
mod error;
mod measure;
mod report;
mod runner;
mod scenario;
mod scram;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use jabberfarm_proto::sasl::Mechanism;

use crate::client::ClientConfig;
use crate::error::{BenchError, Result};
use crate::measure::Servers;
use crate::report::Report;
use crate::scenario::{Ctx, Users};

/// Hard caps: whatever the command line says, a run stays within these.
const MAX_COUNT: u64 = 10_000_000;
/// Below the 20,000 open files a process may have here, with room for the runtime.
const MAX_CONNECTIONS: u64 = 19_500;
const MAX_DURATION_SECS: u64 = 3_600;
const MAX_RATE: f64 = 1_000_000.0;
/// Bound of the unmeasured phases (discovery, chat logins).
pub const MAX_SETUP_SECS: u64 = 600;

/// Load an XMPP server on loopback and measure it: redirects, logins, idle sessions, chat.
///
/// Every scenario prints a table and, with --json FILE, writes the figures as JSON. With
/// --server-pid (repeatable) the server's CPU time (utime+stime from /proc) over the measured
/// phase is reported per operation, and `idle` reports its memory per session.
#[derive(Parser)]
#[command(name = "jabberfarm-bench", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Logins at the master that end in <see-other-host/>: redirects/s, latency, CPU per
    /// redirect.
    Redirect {
        #[command(flatten)]
        t: TargetArgs,
        /// Connections at a time.
        #[arg(long, default_value_t = 50)]
        concurrency: u64,
        /// Redirects to run (the run also stops at --duration).
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// JSON of a `floor` run: report the redirect's server CPU as a ratio to it.
        #[arg(long, value_name = "FILE")]
        floor: Option<PathBuf>,
    },
    /// Full logins (stream, STARTTLS, SASL, bind, presence acknowledged), then logout:
    /// logins/s, latency, CPU per login.
    Login {
        #[command(flatten)]
        t: TargetArgs,
        #[arg(long, default_value_t = 20)]
        concurrency: u64,
        #[arg(long, default_value_t = 2_000)]
        count: u64,
        /// Measured logins start at --host/--port and follow redirects themselves, instead of
        /// going straight to the server the discovery pass found for each user.
        #[arg(long)]
        no_pre_route: bool,
    },
    /// Hold N logged-in sessions: the server's memory per session (needs --server-pid).
    Idle {
        #[command(flatten)]
        t: TargetArgs,
        /// Sessions to open (users are reused, with other resources, past --user-count).
        #[arg(long, default_value_t = 1_000)]
        count: u64,
        /// Logins at a time.
        #[arg(long, default_value_t = 50)]
        concurrency: u64,
        /// Seconds to keep the sessions open once all are in.
        #[arg(long, default_value_t = 5)]
        hold: u64,
        /// Once every session is in, write how many are open to FILE; then SIGUSR1 ends the
        /// hold early. Lines up several bench processes that load one farm together
        /// (bench/scale.sh).
        #[arg(long, value_name = "FILE")]
        ready_file: Option<PathBuf>,
        /// A session the server moves (`<see-other-host/>` after login, as live rebalancing
        /// does) logs in again where it is sent; the report counts the moves and times them
        /// (docs/rebalancing.md).
        #[arg(long)]
        follow_moves: bool,
    },
    /// Pairs of users on the same server exchanging messages: closed loop (default) or open
    /// loop at --rate: delivered/s, latency, CPU per message.
    Chat {
        #[command(flatten)]
        t: TargetArgs,
        #[arg(long, default_value_t = 50)]
        pairs: u64,
        /// Offered messages per second over all pairs (open loop). Without it: closed loop.
        #[arg(long, value_name = "MSG/S")]
        rate: Option<f64>,
        /// At most this many messages (the run also stops at --duration).
        #[arg(long, default_value_t = MAX_COUNT)]
        count: u64,
        /// Bytes of each message body.
        #[arg(long, default_value_t = 64)]
        body_size: u64,
        /// Logins at a time while setting up.
        #[arg(long, default_value_t = 50)]
        concurrency: u64,
        /// Pair users that different servers serve (jabberfarm: different slaves, so every
        /// message crosses a farm link); needs --follow-redirects from the master, or
        /// --farm-config when the master relays.
        #[arg(long)]
        across: bool,
        /// A jabberfarm config: with --across, pair users by the slave its routing table
        /// gives them instead of by the address that served them (a master that relays
        /// serves everyone at its own address).
        #[arg(long, value_name = "FILE")]
        farm_config: Option<PathBuf>,
        #[command(flatten)]
        peer: PeerArgs,
        /// Open loop: a session the server moves (live rebalancing) logs in again where it is
        /// sent; duplicates are counted, and messages a moved sender had not seen
        /// acknowledged are counted apart (docs/benchmarks.md).
        #[arg(long, requires = "rate")]
        follow_moves: bool,
    },
    /// Client of the bare-TCP floor (see floor-server): exchanges/s and server CPU per
    /// exchange, the yardstick for `redirect`.
    Floor {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 5999)]
        port: u16,
        #[arg(long, default_value_t = 50)]
        concurrency: u64,
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// The floor-server's pid (its CPU per exchange is the floor).
        #[arg(long = "server-pid", value_name = "PID")]
        server_pid: Vec<u32>,
        #[arg(long, default_value_t = 30)]
        duration: u64,
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Time the server's PBKDF2 (jabberfarm's own SCRAM key derivation, in this process): what
    /// a PLAIN login costs above a SCRAM one.
    Pbkdf2 {
        /// The config's storage.scram_iterations (the demo's: 4096).
        #[arg(long, default_value_t = 4096)]
        iterations: u32,
        /// Derivations to time.
        #[arg(long, default_value_t = 200)]
        count: u64,
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Print the JSON of earlier runs as one Markdown table (one row per file).
    Summary {
        /// JSON files written by --json.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The bare TCP exchange of a redirect's shape (accept, read, write, read, write, close;
    /// no XML), to measure the floor against. Pin it: `taskset -c 0 jabberfarm-bench
    /// floor-server`.
    FloorServer {
        #[arg(long, default_value = "127.0.0.1:5999")]
        listen: std::net::SocketAddr,
        /// Exit after this many seconds.
        #[arg(long, default_value_t = 600)]
        duration: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TlsMode {
    None,
    Starttls,
}

#[derive(clap::Args, Clone)]
struct TargetArgs {
    /// The server to load: a name or address that resolves to loopback only.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Its c2s port (jabberfarm's master in the demo: 5222; slaves 5322, 5422).
    #[arg(long, default_value_t = 5222)]
    port: u16,
    /// The XMPP domain (stream `to`, certificate name).
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// User name pattern: its placeholder (the letter n in braces, as in the default) is
    /// replaced by --first, --first+1, … for --user-count names.
    #[arg(long, default_value = "bench{n}")]
    users: String,
    /// The first user number.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// How many user names the pattern gives (runs that need more reuse them).
    #[arg(long, default_value_t = 1_000)]
    user_count: u64,
    /// Every user's password (bench/setup-users.sh uses the same default).
    #[arg(long, default_value = "bench")]
    password: String,
    #[arg(long, value_enum, default_value = "none")]
    tls: TlsMode,
    /// CA certificate (PEM) to trust for STARTTLS; jabberfarm's demo CA is
    /// jabberfarm-data/tls/ca.pem.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Let TLS resume earlier sessions (session tickets). Default: every handshake is a full
    /// one.
    #[arg(long)]
    tls_resume: bool,
    /// PLAIN, SCRAM-SHA-1 or SCRAM-SHA-256.
    #[arg(long, default_value = "PLAIN", value_parser = parse_mechanism)]
    mechanism: Mechanism,
    /// On <see-other-host/>, reconnect to the HOST:PORT it names (at most 3 hops).
    #[arg(long)]
    follow_redirects: bool,
    /// Enable XEP-0198 stream management after binding, and answer the server's ack
    /// requests (what it costs the server: docs/benchmarks.md).
    #[arg(long)]
    sm: bool,
    /// A server process to measure (repeatable: a farm in separate processes).
    #[arg(long = "server-pid", value_name = "PID")]
    server_pid: Vec<u32>,
    /// Longest measured phase, seconds.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Longest wait for any one answer from the server, seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Write the figures as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Federation: each pair is a user of the target and a user of another server (another
/// domain), so every message crosses server-to-server streams.
#[derive(clap::Args, Clone)]
struct PeerArgs {
    /// The other server's c2s host (loopback only). Turns federated pairing on.
    #[arg(long, value_name = "HOST", requires = "peer_domain")]
    peer_host: Option<String>,
    #[arg(long, default_value_t = 5222)]
    peer_port: u16,
    /// The other server's domain.
    #[arg(long, value_name = "DOMAIN")]
    peer_domain: Option<String>,
    /// Its users (same placeholder as --users; same --password, --mechanism and
    /// --follow-redirects).
    #[arg(long, default_value = "bench{n}")]
    peer_users: String,
    /// STARTTLS to the other server, trusting this CA; default plain.
    #[arg(long, value_name = "FILE")]
    peer_ca: Option<PathBuf>,
}

fn parse_mechanism(s: &str) -> std::result::Result<Mechanism, String> {
    Mechanism::from_name(&s.to_ascii_uppercase())
        .ok_or_else(|| "expected PLAIN, SCRAM-SHA-1 or SCRAM-SHA-256".to_owned())
}

fn check_cap(what: &str, v: u64, max: u64) -> Result<()> {
    if v > max {
        return Err(BenchError::Setup(format!(
            "{what} {v} is over the hard cap of {max}"
        )));
    }
    Ok(())
}

fn usize_of(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

async fn ctx(t: &TargetArgs) -> Result<Ctx> {
    check_cap("--duration", t.duration, MAX_DURATION_SECS)?;
    check_cap("--timeout", t.timeout, 300)?;
    if !t.users.contains("{n}") && t.user_count > 1 {
        return Err(BenchError::Setup(format!(
            "--users {:?} has no {{n}}; give a pattern or --user-count 1",
            t.users
        )));
    }
    let ca = match (t.tls, &t.ca) {
        (TlsMode::None, _) => None,
        (TlsMode::Starttls, Some(ca)) => Some(ca.as_path()),
        (TlsMode::Starttls, None) => {
            return Err(BenchError::Setup(
                "--tls starttls needs --ca FILE (the demo's is jabberfarm-data/tls/ca.pem)".into(),
            ));
        }
    };
    let mut cfg = ClientConfig::new(
        &t.domain,
        &t.password,
        t.mechanism,
        ca,
        t.tls_resume,
        t.follow_redirects,
        Duration::from_secs(t.timeout.max(1)),
    )?;
    cfg.sm = t.sm;
    let start = cfg.resolver.resolve(&t.host, t.port).await?;
    Ok(Ctx {
        cfg: Arc::new(cfg),
        start,
        users: Users {
            pattern: t.users.clone(),
            first: t.first,
            count: t.user_count.max(1),
        },
        servers: Servers::new(t.server_pid.clone())?,
        duration: Duration::from_secs(t.duration),
        tls_label: match (t.tls, t.tls_resume) {
            (TlsMode::None, _) => "none".into(),
            (TlsMode::Starttls, false) => "starttls".into(),
            (TlsMode::Starttls, true) => "starttls (resumed)".into(),
        },
    })
}

/// Seconds after which the process ends whatever it is doing.
fn hard_limit(s: &Scenario) -> u64 {
    let (duration, extra) = match s {
        Scenario::Redirect { t, .. } | Scenario::Login { t, .. } | Scenario::Chat { t, .. } => {
            (t.duration, 0)
        }
        Scenario::Idle { t, hold, .. } => (t.duration, *hold),
        Scenario::Floor { duration, .. } | Scenario::FloorServer { duration, .. } => (*duration, 0),
        Scenario::Pbkdf2 { .. } | Scenario::Summary { .. } => (0, 0),
    };
    duration.min(MAX_DURATION_SECS) + extra.min(MAX_DURATION_SECS) + MAX_SETUP_SECS + 60
}

async fn run(s: Scenario) -> Result<Option<(Report, Option<PathBuf>)>> {
    let report = match s {
        Scenario::Redirect {
            t,
            concurrency,
            count,
            floor,
        } => {
            check_cap("--count", count, MAX_COUNT)?;
            check_cap("--concurrency", concurrency, MAX_CONNECTIONS)?;
            let c = ctx(&t).await?;
            let r =
                scenario::redirect::run(&c, usize_of(concurrency), count, floor.as_deref()).await?;
            (r, t.json)
        }
        Scenario::Login {
            t,
            concurrency,
            count,
            no_pre_route,
        } => {
            check_cap("--count", count, MAX_COUNT)?;
            check_cap("--concurrency", concurrency, MAX_CONNECTIONS)?;
            let c = ctx(&t).await?;
            let r = scenario::login::run(&c, usize_of(concurrency), count, !no_pre_route).await?;
            (r, t.json)
        }
        Scenario::Idle {
            t,
            count,
            concurrency,
            hold,
            ready_file,
            follow_moves,
        } => {
            check_cap("--count", count, MAX_CONNECTIONS)?;
            check_cap("--concurrency", concurrency, MAX_CONNECTIONS)?;
            check_cap("--hold", hold, MAX_DURATION_SECS)?;
            let c = ctx(&t).await?;
            let r = scenario::idle::run(
                &c,
                usize_of(concurrency),
                count,
                Duration::from_secs(hold),
                ready_file.as_deref(),
                follow_moves,
            )
            .await?;
            (r, t.json)
        }
        Scenario::Chat {
            t,
            pairs,
            rate,
            count,
            body_size,
            concurrency,
            across,
            farm_config,
            peer,
            follow_moves,
        } => {
            check_cap("--pairs", pairs.saturating_mul(2), MAX_CONNECTIONS)?;
            check_cap("--count", count, MAX_COUNT)?;
            check_cap("--body-size", body_size, 64 * 1024)?;
            check_cap("--concurrency", concurrency, MAX_CONNECTIONS)?;
            if pairs == 0 {
                return Err(BenchError::Setup("--pairs must be at least 1".into()));
            }
            if let Some(r) = rate
                && !(r > 0.0 && r <= MAX_RATE)
            {
                return Err(BenchError::Setup(format!(
                    "--rate must be above 0 and at most {MAX_RATE}"
                )));
            }
            let c = ctx(&t).await?;
            let peer = match (&peer.peer_host, &peer.peer_domain) {
                (Some(host), Some(domain)) => {
                    if across {
                        return Err(BenchError::Setup(
                            "--across and --peer-host pair users differently; give one".into(),
                        ));
                    }
                    if !peer.peer_users.contains("{n}") && pairs > 1 {
                        return Err(BenchError::Setup(format!(
                            "--peer-users {:?} has no {{n}}",
                            peer.peer_users
                        )));
                    }
                    let cfg = ClientConfig::new(
                        domain,
                        &t.password,
                        t.mechanism,
                        peer.peer_ca.as_deref(),
                        false,
                        t.follow_redirects,
                        Duration::from_secs(t.timeout.max(1)),
                    )?;
                    let addr = cfg.resolver.resolve(host, peer.peer_port).await?;
                    Some(scenario::chat::Peer {
                        cfg: Arc::new(cfg),
                        addr,
                        users: scenario::Users {
                            pattern: peer.peer_users.clone(),
                            first: 0,
                            count: pairs,
                        },
                    })
                }
                _ => None,
            };
            let args = scenario::chat::ChatArgs {
                follow_moves,
                pairs: usize_of(pairs),
                rate,
                count,
                body_size: usize_of(body_size),
                concurrency: usize_of(concurrency),
                across,
                owners: match farm_config {
                    None => None,
                    Some(path) => Some(
                        jabberfarm_config::FarmConfig::load(&path, None)
                            .map_err(|e| BenchError::Setup(e.to_string()))?
                            .routing,
                    ),
                },
                peer,
            };
            (scenario::chat::run(&c, args).await?, t.json)
        }
        Scenario::Floor {
            host,
            port,
            concurrency,
            count,
            server_pid,
            duration,
            json,
        } => {
            check_cap("--count", count, MAX_COUNT)?;
            check_cap("--concurrency", concurrency, MAX_CONNECTIONS)?;
            check_cap("--duration", duration, MAX_DURATION_SECS)?;
            let addr = target::Resolver::default().resolve(&host, port).await?;
            let servers = Servers::new(server_pid)?;
            let r = scenario::floor::run(
                addr,
                &servers,
                usize_of(concurrency),
                count,
                Duration::from_secs(duration),
                Duration::from_secs(10),
            )
            .await?;
            (r, json)
        }
        Scenario::Pbkdf2 {
            iterations,
            count,
            json,
        } => {
            check_cap("--count", count, 100_000)?;
            check_cap("--iterations", u64::from(iterations), 10_000_000)?;
            (scenario::floor::pbkdf2(iterations, count), json)
        }
        Scenario::Summary { files } => {
            print!("{}", report::summary(&files)?);
            return Ok(None);
        }
        Scenario::FloorServer { listen, duration } => {
            check_cap("--duration", duration, MAX_DURATION_SECS)?;
            scenario::floor::serve(listen, Duration::from_secs(duration)).await?;
            return Ok(None);
        }
    };
    Ok(Some(report))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let limit = hard_limit(&cli.scenario);
    // The watchdog: no run outlives its bound, even if a server hangs every connection.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(limit));
        eprintln!("jabberfarm-bench: hard time limit of {limit} s reached, exiting");
        std::process::exit(3);
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jabberfarm-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.scenario)) {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some((report, json))) => {
            print!("{}", report.table());
            if let Some(path) = json
                && let Err(e) = report.write_json(&path)
            {
                eprintln!("jabberfarm-bench: {e}");
                return ExitCode::FAILURE;
            }
            if report.completed == 0 {
                eprintln!("jabberfarm-bench: nothing completed");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("jabberfarm-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
