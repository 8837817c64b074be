//! `[[node]]`: each node's role, listeners and weight, and the checks across the nodes: one
//! master, at least one slave, no two nodes of one name, no two listeners on one address.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use crate::relay::redirect_mode;
use crate::{Problem, RedirectMode, RelayConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Master,
    Slave,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Master => "master",
            Role::Slave => "slave",
        })
    }
}

/// One `[[node]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub name: String,
    pub role: Role,
    /// c2s bind address (plain, STARTTLS).
    pub c2s: SocketAddr,
    /// Direct-TLS c2s bind address (XEP-0368).
    pub c2s_tls: Option<SocketAddr>,
    /// `host:port` given to clients in redirects (IPv6 bracketed: `[::1]:5222`); may differ
    /// from `c2s` behind NAT.
    pub advertise: String,
    /// Farm-link address: this node listens here and the other nodes connect to it.
    pub farm: SocketAddr,
    /// s2s bind address, master only.
    pub s2s: Option<SocketAddr>,
    /// Share of the users in hash mode (1 for the master, which owns none).
    pub weight: u32,
    /// Master: redirect mode of the c2s listener (`None`: `[relay] redirect`).
    pub redirect: Option<RedirectMode>,
    /// Master: redirect mode of the direct-TLS listener (`None`: as `redirect`).
    pub redirect_tls: Option<RedirectMode>,
    /// Where this node serves its metrics and health over HTTP (`None`: it does not).
    pub metrics: Option<SocketAddr>,
    /// A slave taken out of service (`inservice = false`): no new logins; with central data
    /// its users go to the next slave in their ranking. It keeps running.
    pub inservice: bool,
    /// Set by `jabberfarm drain` (or by the slave itself when it stops on SIGTERM), never in
    /// the file: the slave takes no new logins and its sessions move to their next slave.
    pub drain: Option<Drain>,
}

/// A slave being drained (docs/operations.md, "Draining a slave").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    /// The window its sessions are spread over (`None`: `[rebalance] users_per_second`).
    pub over: Option<std::time::Duration>,
    /// The slave asked for it on SIGTERM and stops once drained; the drain ends with its
    /// process (an operator's drain lasts until `jabberfarm undrain`).
    pub stopping: bool,
}

impl Drain {
    /// As a topology's `drain` attribute (and a line of the master's drain file): `over=SECS`
    /// or `rate`, then `;stopping` when the slave asked for it on SIGTERM.
    pub fn to_text(&self) -> String {
        let window = self
            .over
            .map_or("rate".to_owned(), |o| format!("over={}", o.as_secs()));
        if self.stopping {
            format!("{window};stopping")
        } else {
            window
        }
    }

    /// The inverse of [`Self::to_text`].
    pub fn parse(text: &str) -> Result<Drain, String> {
        let (window, stopping) = match text.strip_suffix(";stopping") {
            Some(w) => (w, true),
            None => (text, false),
        };
        let over = match window {
            "rate" => None,
            w => Some(std::time::Duration::from_secs(
                w.strip_prefix("over=")
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("drain {text:?}: neither rate nor over=SECS"))?,
            )),
        };
        Ok(Drain { over, stopping })
    }
}

impl NodeConfig {
    /// Whether the node takes logins: not out of service in the config, not drained.
    pub fn in_service(&self) -> bool {
        self.inservice && self.drain.is_none()
    }

    /// Whether one of this node's c2s listeners uses `mode` (a master's; a slave has none).
    pub fn uses_redirect_mode(&self, relay: &RelayConfig, mode: RedirectMode) -> bool {
        self.role == Role::Master
            && (self.redirect_mode(relay, false) == mode
                || (self.c2s_tls.is_some() && self.redirect_mode(relay, true) == mode))
    }

    /// What this node's c2s listener (`direct_tls`: the direct-TLS one) does with logins.
    pub fn redirect_mode(&self, relay: &RelayConfig, direct_tls: bool) -> RedirectMode {
        let plain = self.redirect.unwrap_or(relay.redirect);
        if direct_tls {
            self.redirect_tls.unwrap_or(plain)
        } else {
            plain
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct RawNode {
    pub(crate) name: Option<String>,
    pub(crate) role: Option<String>,
    c2s: Option<String>,
    c2s_tls: Option<String>,
    advertise: Option<String>,
    farm: Option<String>,
    s2s: Option<String>,
    pub(crate) weight: Option<u32>,
    redirect: Option<String>,
    redirect_tls: Option<String>,
    metrics: Option<String>,
    inservice: Option<bool>,
}

/// What a `[[node]]` says about itself, read before validating it, so that one broken
/// address does not also make its node vanish from the master/slave counts or the routing.
pub(crate) struct Declared {
    pub(crate) name: Option<String>,
    pub(crate) role: Option<Role>,
    pub(crate) weight: u32,
}

pub(crate) fn parse_role(text: &str) -> Option<Role> {
    match text {
        "master" => Some(Role::Master),
        "slave" => Some(Role::Slave),
        _ => None,
    }
}

/// Every node, or `None` where it has a problem (reported), in file order.
pub(crate) fn nodes(
    raw: Vec<RawNode>,
    declared: &[Declared],
    problems: &mut Vec<Problem>,
) -> Vec<Option<NodeConfig>> {
    let (nodes, binds): (Vec<Option<NodeConfig>>, Vec<Binds>) = raw
        .into_iter()
        .enumerate()
        .map(|(i, raw)| node(i, raw, problems))
        .unzip();
    let masters: Vec<usize> = (0..declared.len())
        .filter(|&i| declared[i].role == Some(Role::Master))
        .collect();
    // Several masters answer alike (docs/operations.md, "Several masters"); the first is
    // the primary, which hands out topology changes.
    if masters.is_empty() {
        problems.push(Problem::new("node", "no node has role = \"master\""));
    }
    if !declared.iter().any(|n| n.role == Some(Role::Slave)) {
        problems.push(Problem::new("node", "no node has role = \"slave\""));
    }
    for (i, a) in declared.iter().enumerate() {
        let Some(name) = &a.name else { continue };
        if let Some(j) = declared[..i]
            .iter()
            .position(|b| b.name.as_ref() == Some(name))
        {
            problems.push(Problem::new(
                format!("node[{i}].name"),
                format!("{name:?} is also the name of node[{j}]"),
            ));
        }
    }
    address_conflicts(declared, &binds, problems);
    nodes
}

/// The addresses a node binds, as far as they parsed: checked for clashes even when something
/// else about the node is wrong.
struct Binds {
    c2s: Option<SocketAddr>,
    c2s_tls: Option<SocketAddr>,
    farm: Option<SocketAddr>,
    s2s: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
}

fn node(i: usize, raw: RawNode, problems: &mut Vec<Problem>) -> (Option<NodeConfig>, Binds) {
    let key = |field: &str| format!("node[{i}].{field}");
    let mut ok = true;
    let mut fail = |problems: &mut Vec<Problem>, field: &str, message: String| {
        problems.push(Problem::new(key(field), message));
        ok = false;
    };

    let name = raw.name.unwrap_or_default();
    if name.is_empty() {
        fail(problems, "name", "missing".to_owned());
    } else if !valid_node_name(&name) {
        fail(
            problems,
            "name",
            format!("{name:?}: use lowercase letters, digits, '-', '_' and '.' (at most 63)"),
        );
    }

    let role = match raw.role.as_deref() {
        Some(text) if parse_role(text).is_some() => parse_role(text),
        Some(other) => {
            fail(
                problems,
                "role",
                format!("{other:?}: must be \"master\" or \"slave\""),
            );
            None
        }
        None => {
            fail(
                problems,
                "role",
                "missing (\"master\" or \"slave\")".to_owned(),
            );
            None
        }
    };

    let mut addr = |field: &str, value: Option<String>, required: bool| match value {
        None if required => {
            fail(problems, field, "missing (an IP:port address)".to_owned());
            None
        }
        None => None,
        Some(text) => match text.parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 => {
                fail(problems, field, format!("{text}: port 0"));
                None
            }
            Ok(addr) => Some(addr),
            Err(_) => {
                fail(
                    problems,
                    field,
                    format!("{text:?} is not an IP:port address (IPv6 as [::1]:5222)"),
                );
                None
            }
        },
    };
    let c2s = addr("c2s", raw.c2s, true);
    let c2s_tls = addr("c2s_tls", raw.c2s_tls, false);
    let farm = addr("farm", raw.farm, true);
    let s2s = addr("s2s", raw.s2s, false);
    let metrics = addr("metrics", raw.metrics, false);

    if let Some(farm) = farm.filter(|f| f.ip().is_unspecified()) {
        fail(
            problems,
            "farm",
            format!("{farm}: the other nodes connect to this address, so it must be a real one"),
        );
    }
    if s2s.is_some() && role == Some(Role::Slave) {
        fail(
            problems,
            "s2s",
            "only the master accepts s2s (slaves connect out)".to_owned(),
        );
    }
    let weight = match (raw.weight, role) {
        (Some(_), Some(Role::Master)) => {
            fail(
                problems,
                "weight",
                "the master owns no users; weight is for slaves".to_owned(),
            );
            1
        }
        (Some(0), _) => {
            fail(
                problems,
                "weight",
                "must be at least 1 (remove the slave to give it no users)".to_owned(),
            );
            1
        }
        (Some(w), _) => w,
        (None, _) => 1,
    };
    let advertise = match (raw.advertise, c2s) {
        (Some(text), _) => match normalize_host_port(&text) {
            Ok(advertise) => Some(advertise),
            Err(why) => {
                fail(problems, "advertise", format!("{text:?}: {why}"));
                None
            }
        },
        (None, Some(c2s)) if c2s.ip().is_unspecified() => {
            fail(
                problems,
                "advertise",
                format!(
                    "missing: c2s {c2s} binds every interface, so say which HOST:PORT \
                     clients are sent to"
                ),
            );
            None
        }
        (None, Some(c2s)) => Some(c2s.to_string()),
        (None, None) => None,
    };
    let inservice = raw.inservice.unwrap_or(true);
    if !inservice && role == Some(Role::Master) {
        problems.push(Problem::new(
            key("inservice"),
            "only a slave can be taken out of service",
        ));
        ok = false;
    }
    let mut mode = |field: &str, value: Option<String>| {
        let text = value?;
        if role == Some(Role::Slave) {
            problems.push(Problem::new(
                key(field),
                "only the master redirects or relays logins (slaves always redirect what \
                 is not theirs)",
            ));
            ok = false;
            return None;
        }
        let m = redirect_mode(key(field), &text, problems);
        if m.is_none() {
            ok = false;
        }
        m
    };
    let redirect = mode("redirect", raw.redirect);
    let redirect_tls = mode("redirect_tls", raw.redirect_tls);
    if redirect_tls.is_some() && c2s_tls.is_none() {
        problems.push(Problem::new(
            key("redirect_tls"),
            "set, but this node has no c2s_tls listener",
        ));
        ok = false;
    }
    let binds = Binds {
        c2s,
        c2s_tls,
        farm,
        s2s,
        metrics,
    };
    let config = match (ok, role, c2s, advertise, farm) {
        (true, Some(role), Some(c2s), Some(advertise), Some(farm)) => Some(NodeConfig {
            name,
            role,
            c2s,
            c2s_tls,
            advertise,
            farm,
            s2s,
            weight,
            redirect,
            redirect_tls,
            metrics,
            inservice,
            drain: None,
        }),
        _ => None,
    };
    (config, binds)
}

/// Node names may end up in internal addresses, so they are kept to DNS-label characters.
fn valid_node_name(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// `host:port` as clients should see it: a DNS name or IPv4 address, or a bracketed IPv6
/// address, and a port. IP addresses come back in their canonical form.
fn normalize_host_port(text: &str) -> Result<String, &'static str> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err("port 0");
        }
        return Ok(addr.to_string());
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err("not HOST:PORT");
    };
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err("not HOST:PORT (the port must be 1..65535)"),
        Ok(_) => {}
    }
    if host.contains(':') || host.starts_with('[') {
        return Err("an IPv6 address must be bracketed: [2001:db8::1]:5222");
    }
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        return Err("not a host name or IP address");
    }
    Ok(text.to_ascii_lowercase())
}

/// Two listeners on one address: the same IP and port, or an unspecified IP (0.0.0.0, ::)
/// and the same port on one machine (the same node, or nodes sharing a farm IP or loopback).
fn address_conflicts(declared: &[Declared], binds: &[Binds], problems: &mut Vec<Problem>) {
    struct Listener<'a> {
        node: usize,
        name: &'a str,
        field: &'static str,
        addr: SocketAddr,
        /// The farm IP stands for the machine.
        host: Option<IpAddr>,
    }
    let mut listeners = Vec::new();
    for (i, (node, binds)) in declared.iter().zip(binds).enumerate() {
        let fields = [
            ("c2s", binds.c2s),
            ("c2s_tls", binds.c2s_tls),
            ("farm", binds.farm),
            ("s2s", binds.s2s),
            ("metrics", binds.metrics),
        ];
        for (field, addr) in fields {
            if let Some(addr) = addr {
                listeners.push(Listener {
                    node: i,
                    name: node.name.as_deref().unwrap_or("unnamed"),
                    field,
                    addr,
                    host: binds.farm.map(|f| f.ip()),
                });
            }
        }
    }
    let overlaps = |a: IpAddr, b: IpAddr| {
        a == b
            || (a.is_unspecified() && (a.is_ipv6() || b.is_ipv4()))
            || (b.is_unspecified() && (b.is_ipv6() || a.is_ipv4()))
    };
    for (k, b) in listeners.iter().enumerate() {
        let clash = listeners[..k].iter().find(|a| {
            let same_machine = a.node == b.node
                || match (a.host, b.host) {
                    (Some(x), Some(y)) => x == y || (x.is_loopback() && y.is_loopback()),
                    _ => false,
                };
            a.addr.port() == b.addr.port()
                && ((a.addr.ip() == b.addr.ip() && !a.addr.ip().is_unspecified())
                    || (same_machine && overlaps(a.addr.ip(), b.addr.ip())))
        });
        if let Some(a) = clash {
            problems.push(Problem::new(
                format!("node[{}].{}", b.node, b.field),
                format!(
                    "{} is also used by node[{}].{} ({})",
                    b.addr, a.node, a.field, a.name
                ),
            ));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use crate::test_support::*;

    #[test]
    fn master_and_slave_counts() {
        assert_problem(
            &changed("role = \"master\"", "role = \"slave\""),
            "node",
            "no node has role = \"master\"",
        );
        // A second master is fine; the first is the primary.
        let two = parse(&changed(
            "name = \"slave2\"\nrole = \"slave\"\nweight = 2",
            "name = \"slave2\"\nrole = \"master\"",
        ))
        .unwrap();
        assert_eq!(two.master().name, "master");
        let masters: Vec<&str> = two.masters().map(|m| m.name.as_str()).collect();
        assert_eq!(masters, ["master", "slave2"]);
        assert_problem(
            &format!(
                "{HEAD}{}",
                &NODES[..NODES.find("[[node]]\nname = \"slave1\"").unwrap()]
            ),
            "node",
            "no node has role = \"slave\"",
        );
        assert_problem(HEAD, "node", "no node has role = \"master\"");
        assert_problem(
            &changed("role = \"master\"", "role = \"boss\""),
            "node[0].role",
            "\"boss\"",
        );
        // A slave with a broken address still counts as a slave.
        let problems = problems(&changed("\"127.0.0.1:5322\"", "\"nowhere\""));
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(problems[0].key, "node[1].c2s");
        assert!(problems[0].message.contains("is not an IP:port address"));
    }

    #[test]
    fn node_names() {
        assert_problem(
            &changed("name = \"slave2\"", "name = \"slave1\""),
            "node[2].name",
            "\"slave1\" is also the name of node[1]",
        );
        assert_problem(
            &changed("name = \"slave2\"\n", ""),
            "node[2].name",
            "missing",
        );
        assert_problem(
            &changed("name = \"slave2\"", "name = \"Slave 2\""),
            "node[2].name",
            "use lowercase letters",
        );
    }

    #[test]
    fn listeners_on_one_address() {
        assert_problem(
            &changed("farm = \"127.0.0.1:7102\"", "farm = \"127.0.0.1:7100\""),
            "node[2].farm",
            "127.0.0.1:7100 is also used by node[0].farm (master)",
        );
        // Two listeners of one node.
        assert_problem(
            &changed("s2s = \"127.0.0.1:5269\"", "s2s = \"127.0.0.1:5222\""),
            "node[0].s2s",
            "127.0.0.1:5222 is also used by node[0].c2s (master)",
        );
        // 0.0.0.0 covers 127.0.0.1 on the same machine…
        assert_problem(
            &changed(
                "c2s = \"127.0.0.1:5422\"",
                "c2s = \"0.0.0.0:5322\"\nadvertise = \"xmpp2.example.net:5322\"",
            ),
            "node[2].c2s",
            "0.0.0.0:5322 is also used by node[1].c2s (slave1)",
        );
        // …but not on another machine (different farm address).
        let text = changed(
            "c2s = \"127.0.0.1:5422\"\nfarm = \"127.0.0.1:7102\"",
            "c2s = \"0.0.0.0:5322\"\nadvertise = \"xmpp2.example.net:5322\"\n\
             farm = \"10.0.0.12:7100\"",
        );
        parse(&text).unwrap();
    }

    #[test]
    fn addresses_and_advertise() {
        assert_problem(
            &changed("c2s = \"127.0.0.1:5322\"\n", ""),
            "node[1].c2s",
            "missing",
        );
        assert_problem(
            &changed("\"127.0.0.1:5322\"", "\"127.0.0.1:0\""),
            "node[1].c2s",
            "port 0",
        );
        assert_problem(
            &changed("\"127.0.0.1:7101\"", "\"0.0.0.0:7101\""),
            "node[1].farm",
            "must be a real one",
        );
        assert_problem(
            &changed("\"127.0.0.1:5322\"", "\"0.0.0.0:5322\""),
            "node[1].advertise",
            "missing: c2s 0.0.0.0:5322 binds every interface",
        );
        assert_problem(
            &changed(
                "farm = \"127.0.0.1:7101\"",
                "farm = \"127.0.0.1:7101\"\ns2s = \"127.0.0.1:5270\"",
            ),
            "node[1].s2s",
            "only the master",
        );
        for (advertise, why) in [
            ("::1:5222", "must be bracketed"),
            ("xmpp.example.net", "not HOST:PORT"),
            ("xmpp.example.net:0", "port must be"),
            ("bad_host:5222", "not a host name"),
        ] {
            assert_problem(
                &changed(
                    "farm = \"127.0.0.1:7101\"",
                    &format!("farm = \"127.0.0.1:7101\"\nadvertise = {advertise:?}"),
                ),
                "node[1].advertise",
                why,
            );
        }
        let config = parse(&changed(
            "c2s = \"127.0.0.1:5322\"",
            "c2s = \"[::1]:5322\"\nc2s_tls = \"[::1]:5323\"",
        ))
        .unwrap();
        let slave1 = config.node("slave1").unwrap();
        assert_eq!(slave1.advertise, "[::1]:5322");
        assert_eq!(slave1.c2s_tls, Some("[::1]:5323".parse().unwrap()));
        let config = parse(&changed(
            "farm = \"127.0.0.1:7101\"",
            "farm = \"127.0.0.1:7101\"\nadvertise = \"XMPP1.example.net:5222\"",
        ))
        .unwrap();
        assert_eq!(
            config.node("slave1").unwrap().advertise,
            "xmpp1.example.net:5222"
        );
    }

    #[test]
    fn weights() {
        assert_problem(
            &changed("weight = 2", "weight = 0"),
            "node[2].weight",
            "at least 1",
        );
        assert_problem(
            &changed("role = \"master\"", "role = \"master\"\nweight = 3"),
            "node[0].weight",
            "the master owns no users",
        );
    }
}
