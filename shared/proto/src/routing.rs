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

/// An inclusive range of first letters, lowercase `a..=z`, and the node that owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LetterRange {
    pub first: char,
    pub last: char,
    pub node: String,
}

impl LetterRange {
    fn contains(&self, c: char) -> bool {
        self.first <= c && c <= self.last
    }
}

impl fmt::Display for LetterRange {
    /// `a-g`, or `x` for a one-letter range (the config syntax).
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
    /// First-letter ranges covering `a..=z` exactly once, plus `other` for everything else.
    Ranges {
        ranges: Vec<LetterRange>,
        other: String,
    },
}

/// A validated routing rule. Cheap to clone; swap a new one in to change the rule at run time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingTable {
    mode: RoutingMode,
    /// Ranges mode: index into `ranges` for each letter `a..=z`.
    by_letter: [u8; 26],
    /// Every node that can own users, each once.
    nodes: Vec<String>,
    fingerprint: String,
}

/// Bumped whenever the rule itself changes, so old and new nodes never agree by accident.
const RULE_VERSION: &str = "jabberfarm routing v1";

impl RoutingTable {
    /// Validates `mode` and builds the table. The errors name what is wrong (no slaves, weight 0,
    /// a duplicate name, the letters of a gap or an overlap); whether the nodes exist in the farm
    /// is the config's business.
    pub fn new(mode: RoutingMode) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut by_letter = [0u8; 26];
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
            RoutingMode::Ranges { ranges, other } => {
                check_ranges(ranges, &mut errors);
                if other.is_empty() {
                    errors.push(
                        "no node for usernames that do not start with a..z (other)".to_owned(),
                    );
                }
                for (slot, letter) in by_letter.iter_mut().zip('a'..='z') {
                    if let Some(i) = ranges.iter().position(|r| r.contains(letter)) {
                        *slot = u8::try_from(i).unwrap_or(u8::MAX);
                    }
                }
                let mut sorted: Vec<&LetterRange> = ranges.iter().collect();
                sorted.sort_by_key(|r| r.first);
                for name in sorted.iter().map(|r| &r.node).chain([other]) {
                    if !nodes.contains(name) {
                        nodes.push(name.clone());
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let fingerprint = fingerprint_of(&mode, &by_letter);
        Ok(RoutingTable {
            mode,
            by_letter,
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
            RoutingMode::Ranges { ranges, other } => {
                let range = match normalized_localpart.chars().next() {
                    Some(c @ 'a'..='z') => {
                        ranges.get(usize::from(self.by_letter[usize::from(c as u8 - b'a')]))
                    }
                    _ => None,
                };
                range.map_or(other.as_str(), |r| r.node.as_str())
            }
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
    /// on. Ranges mode: just the owner.
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
            RoutingMode::Ranges { .. } => vec![self.owner(normalized_localpart)],
        }
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

/// Gaps, overlaps and malformed ranges, naming the letters.
fn check_ranges(ranges: &[LetterRange], errors: &mut Vec<String>) {
    let mut well_formed = true;
    for range in ranges {
        if range.node.is_empty() {
            errors.push(format!("range {range} has no node"));
        }
        if !range.first.is_ascii_lowercase() || !range.last.is_ascii_lowercase() {
            errors.push(format!("range {range}: letters must be lowercase a..z"));
            well_formed = false;
        } else if range.first > range.last {
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
            let first = a.first.max(b.first);
            let last = a.last.min(b.last);
            if first <= last {
                errors.push(format!(
                    "ranges {a} and {b} overlap on {}",
                    letters(first, last)
                ));
            }
        }
    }
    let covered = |letter: u8| ranges.iter().any(|r| r.contains(char::from(letter)));
    let mut letter = b'a';
    while letter <= b'z' {
        if covered(letter) {
            letter += 1;
            continue;
        }
        let start = char::from(letter);
        while letter <= b'z' && !covered(letter) {
            letter += 1;
        }
        let end = char::from(letter - 1);
        errors.push(if start == end {
            format!("letter {start} is not covered by any range")
        } else {
            format!("letters {start}..{end} are not covered by any range")
        });
    }
}

/// `f..g`, or `g` alone.
fn letters(first: char, last: char) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}..{last}")
    }
}

/// SHA-256 of a canonical, order-independent description of the rule, 16 hex digits.
fn fingerprint_of(mode: &RoutingMode, by_letter: &[u8; 26]) -> String {
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
        RoutingMode::Ranges { ranges, other } => {
            text.push_str("mode ranges\n");
            // One line per maximal run of letters with the same owner, so that `a-m` and
            // `a-f` + `g-m` on one node (the same rule) have the same fingerprint.
            let owner = |i: usize| ranges.get(usize::from(by_letter[i])).map(|r| &r.node);
            let mut start = 0;
            for i in 1..=26 {
                if i == 26 || owner(i) != owner(start) {
                    let name = owner(start).map_or("", String::as_str);
                    text.push_str(&format!(
                        "range {}-{} {}:{}\n",
                        char::from(b'a' + start as u8),
                        char::from(b'a' + (i - 1) as u8),
                        name.len(),
                        name
                    ));
                    start = i;
                }
            }
            text.push_str(&format!("other {}:{}\n", other.len(), other));
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

    fn range(spec: &str, node: &str) -> LetterRange {
        let (first, last) = spec.split_once('-').unwrap_or((spec, spec));
        LetterRange {
            first: first.chars().next().unwrap(),
            last: last.chars().next().unwrap(),
            node: node.to_owned(),
        }
    }

    fn ranges_mode(specs: &[(&str, &str)], other: &str) -> RoutingMode {
        RoutingMode::Ranges {
            ranges: specs.iter().map(|(s, n)| range(s, n)).collect(),
            other: other.to_owned(),
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
    }
}
