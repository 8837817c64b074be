//! The routing rule: which node owns a user (DESIGN.md D2). Pure, no IO.
//!
//! Every node builds the same [`RoutingTable`] from the farm config and asks it
//! [`RoutingTable::owner`]; the master redirects a login there, a slave serves it only if the
//! answer is itself. Two modes:
//!
//! - **hash**: weighted rendezvous hashing. Each slave scores `weight / -ln(u)` with
//!   `u = (siphash13(key, node_name ‖ 0x00 ‖ localpart) + 1) / 2^64`; the highest score wins,
//!   ties go to the smaller node name. Adding a slave moves only about `w_new / Σw` of the users,
//!   all of them to the new slave.
//! - **ranges**: the first letter of the normalised localpart picks a range (`a-g`, `h-l`, …);
//!   anything that does not start with `a..z` (digits, non-ASCII, punctuation) goes to `other`.
//!
//! The table's [`fingerprint`](RoutingTable::fingerprint) lets nodes check on their farm links
//! that they all apply the same rule. `docs/routing-table.md` explains the rule for operators.

use std::fmt;
use std::hash::Hasher;

use sha2::{Digest, Sha256};
use siphasher::sip::SipHasher13;

/// Why a username cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error("the username is empty")]
    Empty,
    #[error("the username is longer than 1023 bytes")]
    TooLong,
    #[error("the username is not a valid JID localpart (nodeprep, RFC 6122 §2.3)")]
    Invalid,
}

/// Normalises a JID localpart the way the JID library does (stringprep nodeprep: case-folded,
/// NFKC), so that `Alice`, `alice` and `ａｌｉｃｅ` all route to the same node.
pub fn normalize_localpart(localpart: &str) -> Result<String, RoutingError> {
    match jid::NodePart::new(localpart) {
        Ok(part) => Ok(part.as_str().to_owned()),
        Err(jid::Error::NodeEmpty) => Err(RoutingError::Empty),
        Err(jid::Error::NodeTooLong) => Err(RoutingError::TooLong),
        Err(_) => Err(RoutingError::Invalid),
    }
}

/// A slave and its share of the users in hash mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaveWeight {
    pub name: String,
    /// Relative share: a slave with weight 2 gets twice the users of a slave with weight 1.
    pub weight: u32,
}

/// An inclusive range of username prefixes (lowercase `a..z`) and the node that owns it.
///
/// `first-last` covers, in byte order, every name from the first that starts with `first` to
/// the last that starts with `last`: `a-g` is every name starting with a..g, `s-sm` is `s`,
/// `s1`, `sa`… up to every name starting with `sm`, and `sn-z` the rest. So an admin can split
/// a crowded letter, and only the names between an old and a new boundary move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixRange {
    pub first: String,
    pub last: String,
    pub node: String,
    /// The slaves that serve the range's users, in this order, while `node` is failed,
    /// drained or out of service (with central data).
    pub fallback: Vec<String>,
}

/// Sorts after every name that starts with a..z (`{` follows `z` in ASCII): the end of the
/// ranged names.
const END: &str = "{";

impl PrefixRange {
    /// The config syntax: `"a-g"`, `"x"` (one letter or prefix), `"s-sm"`; case-insensitive.
    /// The error says what is wrong, for `jabberfarm check`.
    pub fn parse(text: &str, node: String) -> Result<PrefixRange, String> {
        let lower = text.trim().to_ascii_lowercase();
        let prefix = |s: &str| {
            let s = s.trim();
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase())).then(|| s.to_owned())
        };
        let bounds = match lower.split_once('-') {
            Some((first, last)) => prefix(first).zip(prefix(last)),
            None => prefix(&lower).map(|p| (p.clone(), p)),
        };
        let Some((first, last)) = bounds else {
            return Err(format!(
                "{text:?} is not a range of letters or prefixes like \"a-g\", \"x\" or \"s-sm\""
            ));
        };
        let range = PrefixRange {
            first,
            last,
            node,
            fallback: Vec::new(),
        };
        if range.is_backwards() {
            return Err(format!(
                "{text:?} runs backwards (write \"{}-{}\")",
                range.last, range.first
            ));
        }
        Ok(range)
    }

    /// The names it covers, as the half-open byte-order interval `[start, end)`.
    fn span(&self) -> (&str, String) {
        (&self.first, after_prefix(&self.last))
    }

    fn is_backwards(&self) -> bool {
        let (start, end) = self.span();
        start >= end.as_str()
    }

    fn well_formed(&self) -> bool {
        [&self.first, &self.last]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
    }
}

/// The least string after every string that starts with `prefix` (a..z only): `sm` → `sn`,
/// `sz` → `t`, `z` → [`END`].
fn after_prefix(prefix: &str) -> String {
    let kept = prefix.trim_end_matches('z');
    match kept.as_bytes().last() {
        None => END.to_owned(),
        Some(&b) => {
            let mut next = kept[..kept.len() - 1].to_owned();
            next.push(char::from(b + 1));
            next
        }
    }
}

impl fmt::Display for PrefixRange {
    /// `a-g`, or `x` for a one-prefix range (the config syntax).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// How users are spread over the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutingMode {
    /// Weighted rendezvous hashing over the slaves, keyed so users cannot pick their slave.
    Hash {
        key: [u8; 16],
        slaves: Vec<SlaveWeight>,
    },
    /// Prefix ranges covering every name that starts with `a..z` exactly once, plus `other`
    /// for everything else (and `other_fallback`, as a range's `fallback`).
    Ranges {
        ranges: Vec<PrefixRange>,
        other: String,
        other_fallback: Vec<String>,
    },
}

/// A validated routing rule. Cheap to clone; swap a new one in to change the rule at run time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingTable {
    mode: RoutingMode,
    /// Ranges mode: the ranges' spans sorted by start, for a binary search.
    spans: Vec<Span>,
    /// Every node that can own users, each once.
    nodes: Vec<String>,
    fingerprint: String,
}

/// One range's names, `[start, end)` in byte order, and the range's index in the mode.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Span {
    start: String,
    end: String,
    range: usize,
}

/// Bumped whenever the rule itself changes, so old and new nodes never agree by accident.
const RULE_VERSION: &str = "jabberfarm routing v1";

impl RoutingTable {
    /// Validates `mode` and builds the table. The errors name what is wrong (no slaves, weight 0,
    /// a duplicate name, the letters of a gap or an overlap); whether the nodes exist in the farm
    /// is the config's business.
    pub fn new(mode: RoutingMode) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut spans = Vec::new();
        let mut nodes: Vec<String> = Vec::new();
        match &mode {
            RoutingMode::Hash { slaves, .. } => {
                if slaves.is_empty() {
                    errors.push("no slaves to spread users over".to_owned());
                }
                for (i, slave) in slaves.iter().enumerate() {
                    if slave.name.is_empty() {
                        errors.push(format!("slave #{} has an empty name", i + 1));
                    }
                    if slave.weight == 0 {
                        errors.push(format!("slave {} has weight 0", slave.name));
                    }
                    match slaves[..i].iter().filter(|s| s.name == slave.name).count() {
                        0 => nodes.push(slave.name.clone()),
                        1 => errors.push(format!("slave {} is listed more than once", slave.name)),
                        _ => {}
                    }
                }
            }
            RoutingMode::Ranges {
                ranges,
                other,
                other_fallback,
            } => {
                check_ranges(ranges, &mut errors);
                if other.is_empty() {
                    errors.push(
                        "no node for usernames that do not start with a..z (other)".to_owned(),
                    );
                }
                for r in ranges {
                    check_fallback(&r.to_string(), &r.node, &r.fallback, &mut errors);
                }
                check_fallback("other", other, other_fallback, &mut errors);
                spans = sorted_spans(ranges);
                let sorted = spans.iter().filter_map(|s| ranges.get(s.range));
                for name in sorted.map(|r| &r.node).chain([other]) {
                    if !nodes.contains(name) {
                        nodes.push(name.clone());
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let fingerprint = fingerprint_of(&mode, &spans);
        Ok(RoutingTable {
            mode,
            spans,
            nodes,
            fingerprint,
        })
    }

    /// The rule this table applies.
    pub fn mode(&self) -> &RoutingMode {
        &self.mode
    }

    /// The node that owns `normalized_localpart` (the output of [`normalize_localpart`]).
    /// Hot path: allocates nothing.
    pub fn owner(&self, normalized_localpart: &str) -> &str {
        match &self.mode {
            RoutingMode::Hash { key, slaves } => {
                let mut best: Option<(f64, &str)> = None;
                for slave in slaves {
                    let score = score(key, slave, normalized_localpart);
                    let better = match best {
                        None => true,
                        Some((s, name)) => score > s || (score == s && slave.name.as_str() < name),
                    };
                    if better {
                        best = Some((score, &slave.name));
                    }
                }
                best.map_or("", |(_, name)| name)
            }
            RoutingMode::Ranges { other, .. } => self
                .range_of(normalized_localpart)
                .map_or(other.as_str(), |r| r.node.as_str()),
        }
    }

    /// Normalises `localpart`, then [`owner`](Self::owner).
    pub fn owner_of(&self, localpart: &str) -> Result<&str, RoutingError> {
        let normalized = normalize_localpart(localpart)?;
        Ok(self.owner(&normalized))
    }

    /// 16 hex digits of SHA-256 over a canonical description of the rule. Two tables with the
    /// same fingerprint route every user the same way; nodes compare it on their farm links.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Every node that can own users, each once (hash: the slaves in the order given; ranges:
    /// in letter order, then `other`).
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(String::as_str)
    }

    /// Hash mode: every slave, best first — the owner, then the fallback if it is down, and so
    /// on. Ranges mode: the owner, then its range's `fallback` list.
    pub fn ranked(&self, normalized_localpart: &str) -> Vec<&str> {
        match &self.mode {
            RoutingMode::Hash { key, slaves } => {
                let mut scored: Vec<(f64, &str)> = slaves
                    .iter()
                    .map(|s| (score(key, s, normalized_localpart), s.name.as_str()))
                    .collect();
                scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
                scored.into_iter().map(|(_, name)| name).collect()
            }
            RoutingMode::Ranges { other_fallback, .. } => {
                let owner = self.owner(normalized_localpart);
                let fallback = self
                    .range_of(normalized_localpart)
                    .map_or(other_fallback, |r| &r.fallback);
                std::iter::once(owner)
                    .chain(fallback.iter().map(String::as_str))
                    .collect()
            }
        }
    }

    /// Ranges mode: the ranges `node` owns (as written, `other` for the names outside them)
    /// whose fallback list has no node that `usable` accepts — users nobody else can serve
    /// while `node` is away. Hash mode: none while another slave is usable, else `every user`.
    pub fn stranded(&self, node: &str, usable: impl Fn(&str) -> bool) -> Vec<String> {
        let none_usable = |list: &[String]| !list.iter().any(|n| n != node && usable(n));
        match &self.mode {
            RoutingMode::Hash { slaves, .. } => {
                if slaves.iter().any(|s| s.name != node && usable(&s.name)) {
                    Vec::new()
                } else {
                    vec!["every user".to_owned()]
                }
            }
            RoutingMode::Ranges {
                ranges,
                other,
                other_fallback,
            } => {
                let mut out: Vec<String> = self
                    .spans
                    .iter()
                    .filter_map(|s| ranges.get(s.range))
                    .filter(|r| r.node == node && none_usable(&r.fallback))
                    .map(|r| r.to_string())
                    .collect();
                if other == node && none_usable(other_fallback) {
                    out.push("other".to_owned());
                }
                out
            }
        }
    }

    /// Ranges mode: the range `normalized_localpart` falls in (`None`: `other`, or hash mode):
    /// the last span that starts at or before the name, if the name is before its end (after
    /// validation, always: the spans tile a..z). Allocates nothing.
    fn range_of(&self, normalized_localpart: &str) -> Option<&PrefixRange> {
        let RoutingMode::Ranges { ranges, .. } = &self.mode else {
            return None;
        };
        let user = normalized_localpart;
        let at = self.spans.partition_point(|s| s.start.as_str() <= user);
        let span = at.checked_sub(1).and_then(|i| self.spans.get(i));
        span.filter(|s| user < s.end.as_str())
            .and_then(|s| ranges.get(s.range))
    }
}

/// A slave's rendezvous score for a user: `weight / -ln(u)`, `u` uniform in (0, 1].
fn score(key: &[u8; 16], slave: &SlaveWeight, localpart: &str) -> f64 {
    let mut hasher = SipHasher13::new_with_key(key);
    hasher.write(slave.name.as_bytes());
    hasher.write(&[0]);
    hasher.write(localpart.as_bytes());
    score_of_hash(slave.weight, hasher.finish())
}

fn score_of_hash(weight: u32, hash: u64) -> f64 {
    // In f64, so u64::MAX + 1 rounds to exactly 2^64 and u stays in (0, 1].
    let u = (hash as f64 + 1.0) / 18_446_744_073_709_551_616.0;
    let neg_ln = -u.ln();
    // u == 1: -ln(u) is -0.0, and weight / -0.0 would be -inf, the lowest score.
    if neg_ln <= 0.0 {
        f64::INFINITY
    } else {
        f64::from(weight) / neg_ln
    }
}

/// The spans of `ranges`, sorted by start.
fn sorted_spans(ranges: &[PrefixRange]) -> Vec<Span> {
    let mut spans: Vec<Span> = ranges
        .iter()
        .enumerate()
        .map(|(range, r)| {
            let (start, end) = r.span();
            Span {
                start: start.to_owned(),
                end,
                range,
            }
        })
        .collect();
    spans.sort_by(|a, b| a.start.cmp(&b.start).then(a.end.cmp(&b.end)));
    spans
}

/// Gaps, overlaps and malformed ranges, naming the names.
fn check_ranges(ranges: &[PrefixRange], errors: &mut Vec<String>) {
    let mut well_formed = true;
    for range in ranges {
        if range.node.is_empty() {
            errors.push(format!("range {range} has no node"));
        }
        if !range.well_formed() {
            errors.push(format!("range {range}: letters must be lowercase a..z"));
            well_formed = false;
        } else if range.is_backwards() {
            errors.push(format!(
                "range {range} runs backwards (write {}-{})",
                range.last, range.first
            ));
            well_formed = false;
        }
    }
    if !well_formed {
        return;
    }
    for (i, a) in ranges.iter().enumerate() {
        for b in &ranges[i + 1..] {
            let ((a_start, a_end), (b_start, b_end)) = (a.span(), b.span());
            let start = a_start.max(b_start);
            let end = a_end.min(b_end);
            if start < end.as_str() {
                errors.push(format!(
                    "ranges {a} and {b} overlap on {}",
                    names(start, &end)
                ));
            }
        }
    }
    let mut covered_to = "a".to_owned();
    for span in sorted_spans(ranges) {
        if span.start > covered_to {
            errors.push(uncovered(&covered_to, &span.start));
        }
        if span.end > covered_to {
            covered_to = span.end;
        }
    }
    if covered_to.as_str() < END {
        errors.push(uncovered(&covered_to, END));
    }
}

fn uncovered(start: &str, end: &str) -> String {
    let what = names(start, end);
    if start.len() > 1 || end.len() > 1 {
        format!("{what} are not covered by any range")
    } else if what.len() == 1 {
        format!("letter {what} is not covered by any range")
    } else {
        format!("letters {what} are not covered by any range")
    }
}

/// The names `[start, end)`, said as a person would: `f..g` or `g` for whole letters, else
/// `names starting with sm`, `names from sa to sm…` (`…`: and every name that starts so), or
/// `names from s up to sa (not included)`.
fn names(start: &str, end: &str) -> String {
    // The prefix whose names end just before `end`, if there is one: `sn` → `sm`, `{` → `z`.
    let last = end.as_bytes().split_last().and_then(|(&b, head)| {
        let b = b.checked_sub(1).filter(u8::is_ascii_lowercase)?;
        let mut last = String::from_utf8(head.to_vec()).ok()?;
        last.push(char::from(b));
        Some(last)
    });
    match last {
        Some(last) if start.len() == 1 && last.len() == 1 && start == last => last,
        Some(last) if start.len() == 1 && last.len() == 1 => format!("{start}..{last}"),
        Some(last) if start == last => format!("names starting with {start}"),
        Some(last) => format!("names from {start} to {last}…"),
        None => format!("names from {start} up to {end} (not included)"),
    }
}

/// A fallback list in a fingerprint: ` fallback 6:slave2 6:slave3` (order matters), or
/// nothing.
fn fallback_text(fallback: &[String]) -> String {
    fallback.iter().fold(String::new(), |mut t, n| {
        if t.is_empty() {
            t.push_str(" fallback");
        }
        t.push_str(&format!(" {}:{n}", n.len()));
        t
    })
}

/// A fallback list names other slaves than the owner, each once.
fn check_fallback(what: &str, owner: &str, fallback: &[String], errors: &mut Vec<String>) {
    for (i, n) in fallback.iter().enumerate() {
        if n == owner {
            errors.push(format!("{what}: its fallback lists its own node {n}"));
        } else if fallback[..i].contains(n) {
            errors.push(format!("{what}: its fallback lists {n} twice"));
        }
    }
}

/// SHA-256 of a canonical, order-independent description of the rule, 16 hex digits.
fn fingerprint_of(mode: &RoutingMode, spans: &[Span]) -> String {
    let mut text = format!("{RULE_VERSION}\n");
    match mode {
        RoutingMode::Hash { key, slaves } => {
            text.push_str(&format!("mode hash\nkey {}\n", hex::encode(key)));
            // The rule does not depend on the order the slaves are listed in.
            let mut sorted: Vec<&SlaveWeight> = slaves.iter().collect();
            sorted.sort_by(|a, b| a.name.cmp(&b.name));
            for s in sorted {
                text.push_str(&format!("slave {}:{} {}\n", s.name.len(), s.name, s.weight));
            }
        }
        RoutingMode::Ranges {
            ranges,
            other,
            other_fallback,
        } => {
            text.push_str("mode ranges\n");
            // One line per maximal run of names with the same owner, so that `a-m` and
            // `a-f` + `g-m` on one node (the same rule) have the same fingerprint. Whole
            // letters keep the form `a-g` of the first-letter tables, whose fingerprints
            // therefore did not change when prefixes came.
            // A fallback list is part of the run (and written only when there is one, so
            // tables without fallbacks kept their fingerprints when fallbacks came).
            let owner = |s: &Span| {
                ranges.get(s.range).map_or(("", String::new()), |r| {
                    (r.node.as_str(), fallback_text(&r.fallback))
                })
            };
            let mut runs: Vec<(&str, &str, (&str, String))> = Vec::new();
            for span in spans {
                match runs.last_mut() {
                    Some((_, end, node)) if *end == span.start && *node == owner(span) => {
                        *end = &span.end;
                    }
                    _ => runs.push((&span.start, &span.end, owner(span))),
                }
            }
            for (start, end, (node, fallback)) in runs {
                let run = if start.len() == 1 && end.len() == 1 {
                    names(start, end).replace("..", "-")
                } else {
                    format!("{start}..{end}")
                };
                let run = if run.len() == 1 {
                    format!("{run}-{run}")
                } else {
                    run
                };
                text.push_str(&format!("range {run} {}:{node}{fallback}\n", node.len()));
            }
            text.push_str(&format!(
                "other {}:{}{}\n",
                other.len(),
                other,
                fallback_text(other_fallback)
            ));
        }
    }
    let digest = Sha256::digest(text.as_bytes());
    hex::encode(&digest[..8])
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn hash_table(key: [u8; 16], slaves: &[(&str, u32)]) -> RoutingTable {
        RoutingTable::new(RoutingMode::Hash {
            key,
            slaves: slaves
                .iter()
                .map(|(name, weight)| SlaveWeight {
                    name: (*name).to_owned(),
                    weight: *weight,
                })
                .collect(),
        })
        .unwrap()
    }

    /// A range as written, even a malformed one (the table must say what is wrong).
    fn range(spec: &str, node: &str) -> PrefixRange {
        let (first, last) = spec.split_once('-').unwrap_or((spec, spec));
        PrefixRange {
            first: first.to_owned(),
            last: last.to_owned(),
            node: node.to_owned(),
            fallback: Vec::new(),
        }
    }

    fn ranges_mode(specs: &[(&str, &str)], other: &str) -> RoutingMode {
        RoutingMode::Ranges {
            ranges: specs.iter().map(|(s, n)| range(s, n)).collect(),
            other: other.to_owned(),
            other_fallback: Vec::new(),
        }
    }

    /// 100,000 distinct usernames: `user0..` plus pseudo-random lowercase names.
    fn names() -> Vec<String> {
        let mut names: Vec<String> = (0..50_000).map(|i| format!("user{i}")).collect();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        while names.len() < 100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = 3 + (state % 10) as usize;
            let name: String = (0..len)
                .map(|i| char::from(b'a' + ((state >> (i * 5)) % 26) as u8))
                .collect();
            names.push(format!("{name}{}", names.len()));
        }
        names
    }

    const KEY: [u8; 16] = [7; 16];

    #[test]
    fn normalize_case_folds_and_rejects_invalid() {
        assert_eq!(normalize_localpart("Alice").unwrap(), "alice");
        assert_eq!(normalize_localpart("ÜNÏCØDÉ").unwrap(), "ünïcødé");
        assert_eq!(normalize_localpart("ａｌｉｃｅ").unwrap(), "alice");
        assert_eq!(normalize_localpart(""), Err(RoutingError::Empty));
        assert_eq!(normalize_localpart("a b"), Err(RoutingError::Invalid));
        assert_eq!(normalize_localpart("a@b"), Err(RoutingError::Invalid));
        assert_eq!(
            normalize_localpart(&"x".repeat(1024)),
            Err(RoutingError::TooLong)
        );
    }

    #[test]
    fn hash_is_deterministic_and_ignores_slave_order() {
        let a = hash_table(KEY, &[("s1", 1), ("s2", 1), ("s3", 1)]);
        let b = hash_table(KEY, &[("s3", 1), ("s1", 1), ("s2", 1)]);
        for name in names().iter().take(5_000) {
            assert_eq!(a.owner(name), a.owner(name));
            assert_eq!(a.owner(name), b.owner(name));
        }
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.owner_of("Alice").unwrap(), a.owner("alice"));
        assert_eq!(a.owner_of("a b"), Err(RoutingError::Invalid));
    }

    #[test]
    fn hash_spreads_evenly() {
        let table = hash_table(KEY, &[("s1", 1), ("s2", 1), ("s3", 1), ("s4", 1)]);
        let names = names();
        for slave in ["s1", "s2", "s3", "s4"] {
            let n = names.iter().filter(|n| table.owner(n) == slave).count();
            let share = n as f64 / names.len() as f64;
            assert!((share - 0.25).abs() < 0.02, "{slave} got {share}");
        }
    }

    #[test]
    fn adding_a_slave_moves_only_its_share_and_only_to_it() {
        let four = hash_table(KEY, &[("s1", 1), ("s2", 1), ("s3", 1), ("s4", 1)]);
        let five = hash_table(
            KEY,
            &[("s1", 1), ("s2", 1), ("s3", 1), ("s4", 1), ("s5", 1)],
        );
        let names = names();
        let mut moved = 0;
        for name in &names {
            let (before, after) = (four.owner(name), five.owner(name));
            if before != after {
                assert_eq!(after, "s5", "{name} moved from {before} to {after}");
                moved += 1;
            }
        }
        let share = moved as f64 / names.len() as f64;
        assert!((share - 0.20).abs() < 0.02, "moved {share}");
    }

    #[test]
    fn weights_set_the_share() {
        let table = hash_table(KEY, &[("s1", 1), ("s2", 1), ("s3", 1), ("big", 2)]);
        let names = names();
        let n = names.iter().filter(|n| table.owner(n) == "big").count();
        let share = n as f64 / names.len() as f64;
        assert!((share - 0.40).abs() < 0.02, "big got {share}");
    }

    #[test]
    fn ranked_starts_with_the_owner_and_lists_every_slave_once() {
        let table = hash_table(KEY, &[("s1", 1), ("s2", 1), ("s3", 2)]);
        for name in names().iter().take(1_000) {
            let ranked = table.ranked(name);
            assert_eq!(ranked[0], table.owner(name));
            let mut sorted = ranked.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, ["s1", "s2", "s3"]);
        }
    }

    #[test]
    fn ranges_rank_the_owner_then_its_range_s_fallback_list() {
        let mut mode = ranges_mode(&[("a-m", "s1"), ("n-z", "s2")], "s1");
        let RoutingMode::Ranges {
            ranges,
            other_fallback,
            ..
        } = &mut mode
        else {
            unreachable!()
        };
        ranges[0].fallback = vec!["s3".to_owned(), "s2".to_owned()];
        *other_fallback = vec!["s2".to_owned()];
        let plain = RoutingTable::new(ranges_mode(&[("a-m", "s1"), ("n-z", "s2")], "s1")).unwrap();
        let table = RoutingTable::new(mode.clone()).unwrap();
        assert_eq!(table.ranked("alice"), ["s1", "s3", "s2"]);
        assert_eq!(table.ranked("zoe"), ["s2"]);
        assert_eq!(table.ranked("1st"), ["s1", "s2"]);
        assert_eq!(plain.ranked("alice"), ["s1"]);
        // The owners are the same; the fallbacks are part of the rule all the same.
        assert_eq!(table.owner("alice"), plain.owner("alice"));
        assert_ne!(table.fingerprint(), plain.fingerprint());
        // Who has nowhere to go while a slave is away.
        assert_eq!(table.stranded("s1", |_| true), Vec::<String>::new());
        assert_eq!(table.stranded("s1", |n| n != "s2"), ["other"]);
        assert_eq!(table.stranded("s1", |_| false), ["a-m", "other"]);
        assert_eq!(table.stranded("s2", |_| true), ["n-z"]);
        assert_eq!(plain.stranded("s1", |_| true), ["a-m", "other"]);
        let RoutingMode::Ranges { ranges, .. } = &mut mode else {
            unreachable!()
        };
        ranges[1].fallback = vec!["s2".to_owned(), "s1".to_owned(), "s1".to_owned()];
        let errors = RoutingTable::new(mode).unwrap_err();
        assert_eq!(
            errors,
            [
                "n-z: its fallback lists its own node s2",
                "n-z: its fallback lists s1 twice"
            ]
        );
    }

    #[test]
    fn score_grows_with_the_hash_and_u_equal_one_is_the_maximum() {
        assert_eq!(score_of_hash(1, u64::MAX), f64::INFINITY);
        let low = score_of_hash(1, 0);
        let mid = score_of_hash(1, u64::MAX / 2);
        assert!(0.0 < low && low < mid && mid < score_of_hash(1, u64::MAX - (1 << 12)));
        assert_eq!(score_of_hash(2, 12345), 2.0 * score_of_hash(1, 12345));
    }

    #[test]
    fn hash_validation_names_the_problem() {
        let err = |slaves: Vec<(&str, u32)>| {
            RoutingTable::new(RoutingMode::Hash {
                key: KEY,
                slaves: slaves
                    .into_iter()
                    .map(|(n, w)| SlaveWeight {
                        name: n.to_owned(),
                        weight: w,
                    })
                    .collect(),
            })
            .unwrap_err()
        };
        assert_eq!(err(vec![]), ["no slaves to spread users over"]);
        assert_eq!(err(vec![("s1", 0)]), ["slave s1 has weight 0"]);
        assert_eq!(
            err(vec![("s1", 1), ("s1", 1), ("s1", 1)]),
            ["slave s1 is listed more than once"]
        );
    }

    fn four_ranges() -> RoutingTable {
        RoutingTable::new(ranges_mode(
            &[("a-g", "s1"), ("h-l", "s2"), ("m-y", "s3"), ("z", "s4")],
            "s5",
        ))
        .unwrap()
    }

    #[test]
    fn ranges_pick_the_right_node_at_every_boundary() {
        let table = four_ranges();
        for (user, node) in [
            ("a", "s1"),
            ("alice", "s1"),
            ("gus", "s1"),
            ("h", "s2"),
            ("lara", "s2"),
            ("m", "s3"),
            ("yves", "s3"),
            ("zoe", "s4"),
            ("0day", "s5"),
            ("9", "s5"),
            ("éric", "s5"),
            ("_x", "s5"),
            ("", "s5"),
        ] {
            assert_eq!(table.owner(user), node, "{user}");
        }
        assert_eq!(table.owner_of("Gus").unwrap(), "s1");
        assert_eq!(table.owner_of("HARRY").unwrap(), "s2");
        assert_eq!(table.owner_of("Éric").unwrap(), "s5");
        assert_eq!(table.ranked("harry"), ["s2"]);
        assert_eq!(
            table.nodes().collect::<Vec<_>>(),
            ["s1", "s2", "s3", "s4", "s5"]
        );
    }

    #[test]
    fn ranges_gap_and_overlap_name_the_letters() {
        let errors = RoutingTable::new(ranges_mode(
            &[("a-g", "s1"), ("f-m", "s2"), ("s-x", "s3"), ("z", "s3")],
            "s1",
        ))
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "ranges a-g and f-m overlap on f..g",
                "letters n..r are not covered by any range",
                "letter y is not covered by any range",
            ]
        );
        let errors =
            RoutingTable::new(ranges_mode(&[("a-g", "s1"), ("g-z", "s2")], "s1")).unwrap_err();
        assert_eq!(errors, ["ranges a-g and g-z overlap on g"]);
        let errors = RoutingTable::new(ranges_mode(&[], "s1")).unwrap_err();
        assert_eq!(errors, ["letters a..z are not covered by any range"]);
        let errors =
            RoutingTable::new(ranges_mode(&[("m-a", "s1"), ("B-z", "s2")], "")).unwrap_err();
        assert_eq!(
            errors,
            [
                "range m-a runs backwards (write a-m)",
                "range B-z: letters must be lowercase a..z",
                "no node for usernames that do not start with a..z (other)",
            ]
        );
    }

    #[test]
    fn fingerprint_changes_with_the_rule_only() {
        let base = hash_table(KEY, &[("s1", 1), ("s2", 1)]);
        assert_eq!(base.fingerprint().len(), 16);
        assert!(base.fingerprint().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            base.fingerprint(),
            hash_table(KEY, &[("s1", 1), ("s2", 1)]).fingerprint()
        );
        for other in [
            hash_table(KEY, &[("s1", 1), ("s2", 2)]),
            hash_table([8; 16], &[("s1", 1), ("s2", 1)]),
            hash_table(KEY, &[("s1", 1), ("s3", 1)]),
            hash_table(KEY, &[("s1", 1), ("s2", 1), ("s3", 1)]),
        ] {
            assert_ne!(base.fingerprint(), other.fingerprint());
        }

        let ranges = four_ranges();
        assert_ne!(ranges.fingerprint(), base.fingerprint());
        let same = RoutingTable::new(ranges_mode(
            &[
                ("z", "s4"),
                ("a-c", "s1"),
                ("d-g", "s1"),
                ("h-l", "s2"),
                ("m-y", "s3"),
            ],
            "s5",
        ))
        .unwrap();
        assert_eq!(ranges.fingerprint(), same.fingerprint());
        for changed in [
            ranges_mode(
                &[("a-h", "s1"), ("i-l", "s2"), ("m-y", "s3"), ("z", "s4")],
                "s5",
            ),
            ranges_mode(
                &[("a-g", "s1"), ("h-l", "s2"), ("m-y", "s3"), ("z", "s4")],
                "s1",
            ),
            ranges_mode(
                &[("a-g", "s1"), ("h-l", "s2"), ("m-y", "s3"), ("z", "s3")],
                "s5",
            ),
        ] {
            let changed = RoutingTable::new(changed).unwrap();
            assert_ne!(ranges.fingerprint(), changed.fingerprint());
        }
        // First-letter tables keep the fingerprint they had before prefixes came (pinned:
        // SHA-256 of the canonical text, by hand), so a rolling upgrade agrees.
        assert_eq!(ranges.fingerprint(), "5552ffd8cd43c122");
        // A prefix split is its own rule; `s-sm` + `sn-s` on one node is `s` again.
        let split = |second: &str| {
            RoutingTable::new(ranges_mode(
                &[
                    ("a-r", "s1"),
                    ("s-sm", "s2"),
                    ("sn-s", second),
                    ("t-z", "s3"),
                ],
                "s1",
            ))
            .unwrap()
        };
        let whole = RoutingTable::new(ranges_mode(
            &[("a-r", "s1"), ("s", "s2"), ("t-z", "s3")],
            "s1",
        ))
        .unwrap();
        assert_eq!(split("s2").fingerprint(), whole.fingerprint());
        assert_ne!(split("s3").fingerprint(), whole.fingerprint());
        assert_eq!(
            split("s3").fingerprint(),
            RoutingTable::new(ranges_mode(
                &[("a-r", "s1"), ("s-sm", "s2"), ("sn-z", "s3")],
                "s1"
            ))
            .unwrap()
            .fingerprint()
        );
    }

    /// Ranges at any prefix (issue 13): `s-sm` and `sn-z` split the letter s, and every name
    /// that starts with a..z has exactly one owner, whatever follows (digits, non-ASCII).
    #[test]
    fn prefix_ranges_split_a_letter() {
        let table = RoutingTable::new(ranges_mode(
            &[
                ("a-g", "s1"),
                ("h-l", "s2"),
                ("m-r", "s3"),
                ("s-sm", "s4"),
                ("sn-z", "s5"),
            ],
            "s6",
        ))
        .unwrap();
        for (user, node) in [
            ("rzzz", "s3"),
            ("s", "s4"),
            ("s1", "s4"),
            ("s_x", "s4"),
            ("sa", "s4"),
            ("smith", "s4"),
            ("smzzz", "s4"),
            ("sn", "s5"),
            ("snow", "s5"),
            ("sz", "s5"),
            ("sé", "s5"),
            ("t", "s5"),
            ("zz", "s5"),
            ("zé", "s5"),
            ("éric", "s6"),
            ("0", "s6"),
        ] {
            assert_eq!(table.owner(user), node, "{user}");
        }
        assert_eq!(
            table.nodes().collect::<Vec<_>>(),
            ["s1", "s2", "s3", "s4", "s5", "s6"]
        );

        // Deeper splits, and a range written as one prefix.
        let table = RoutingTable::new(ranges_mode(
            &[("a-smz", "s1"), ("sn", "s2"), ("so-z", "s3")],
            "s1",
        ))
        .unwrap();
        for (user, node) in [("smzz9", "s1"), ("sn", "s2"), ("snzé", "s2"), ("so", "s3")] {
            assert_eq!(table.owner(user), node, "{user}");
        }
    }

    #[test]
    fn prefix_gaps_and_overlaps_are_named() {
        let errors = RoutingTable::new(ranges_mode(
            &[("a-r", "s1"), ("s-sl", "s2"), ("sn-z", "s3")],
            "s1",
        ))
        .unwrap_err();
        assert_eq!(
            errors,
            ["names starting with sm are not covered by any range"]
        );
        let errors =
            RoutingTable::new(ranges_mode(&[("a-sm", "s1"), ("sa-z", "s2")], "s1")).unwrap_err();
        assert_eq!(
            errors,
            ["ranges a-sm and sa-z overlap on names from sa to sm…"]
        );
        // A name between a letter and its first two-letter prefix (`s`, `s1`) needs a range.
        let errors =
            RoutingTable::new(ranges_mode(&[("a-r", "s1"), ("sa-z", "s2")], "s1")).unwrap_err();
        assert_eq!(
            errors,
            ["names from s up to sa (not included) are not covered by any range"]
        );
        let errors = RoutingTable::new(ranges_mode(&[("sb-sa", "s1")], "s1")).unwrap_err();
        assert_eq!(errors[0], "range sb-sa runs backwards (write sa-sb)");
    }
}
