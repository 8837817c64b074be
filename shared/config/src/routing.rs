//! `[routing]`: which slave owns which user, by hash or by the first letter of the username;
//! built into a `RoutingTable` (`jabberfarm_proto::routing`).

use serde::Deserialize;

use jabberfarm_proto::routing::{PrefixRange, RoutingMode, RoutingTable, SlaveWeight};

use crate::nodes::Declared;
use crate::{Problem, Role};

#[derive(Deserialize, Default)]
pub(crate) struct RawRouting {
    mode: Option<String>,
    hash_key: Option<String>,
    other: Option<String>,
    #[serde(default)]
    other_fallback: Vec<String>,
    #[serde(default)]
    ranges: Vec<RawRange>,
}

#[derive(Deserialize)]
pub(crate) struct RawRange {
    letters: Option<String>,
    node: Option<String>,
    #[serde(default)]
    fallback: Vec<String>,
}

pub(crate) fn routing(
    raw: RawRouting,
    nodes: &[Declared],
    problems: &mut Vec<Problem>,
) -> Option<RoutingTable> {
    let before = problems.len();
    let key = match raw.hash_key {
        Some(text) => match hex::decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
        {
            Some(key) => Some(key),
            None => {
                problems.push(Problem::new(
                    "routing.hash_key",
                    "must be 32 hex digits (16 bytes; `openssl rand -hex 16` makes one)",
                ));
                None
            }
        },
        None => None,
    };
    // Whether a name may own users: Err(message) if not.
    let owner_check = |name: &str| -> Result<(), String> {
        match nodes.iter().find(|n| n.name.as_deref() == Some(name)) {
            Some(n) if n.role == Some(Role::Master) => Err(format!(
                "{name:?} is the master, which owns no users; name a slave"
            )),
            Some(_) => Ok(()),
            None => Err(format!("no [[node]] is named {name:?}")),
        }
    };
    let mode = match raw.mode.as_deref() {
        None | Some("hash") => {
            let Some(key) = key else {
                if problems.len() == before {
                    problems.push(Problem::new(
                        "routing.hash_key",
                        "missing: hash mode needs a key (`openssl rand -hex 16` makes one)",
                    ));
                }
                return None;
            };
            // Weights, duplicate names and "no slave" are reported against the nodes.
            let mut slaves: Vec<SlaveWeight> = Vec::new();
            for node in nodes.iter().filter(|n| n.role == Some(Role::Slave)) {
                let Some(name) = &node.name else { continue };
                if !slaves.iter().any(|s| &s.name == name) {
                    slaves.push(SlaveWeight {
                        name: name.clone(),
                        weight: node.weight,
                    });
                }
            }
            if slaves.is_empty() {
                return None;
            }
            RoutingMode::Hash { key, slaves }
        }
        Some("ranges") => {
            let mut ranges = Vec::new();
            let mut all_parsed = true;
            for (i, range) in raw.ranges.into_iter().enumerate() {
                let key = |field: &str| format!("routing.ranges[{i}].{field}");
                let node = match range.node {
                    Some(node) => {
                        if let Err(message) = owner_check(&node) {
                            problems.push(Problem::new(key("node"), message));
                        }
                        Some(node)
                    }
                    None => {
                        problems.push(Problem::new(key("node"), "missing"));
                        None
                    }
                };
                let parsed = match range.letters.as_deref() {
                    Some(text) => PrefixRange::parse(text, node.clone().unwrap_or_default())
                        .map_err(|message| problems.push(Problem::new(key("letters"), message))),
                    None => {
                        problems.push(Problem::new(
                            key("letters"),
                            "missing (like \"a-g\", or \"s-sm\" to split a letter)",
                        ));
                        Err(())
                    }
                };
                for name in &range.fallback {
                    if let Err(message) = owner_check(name) {
                        problems.push(Problem::new(key("fallback"), message));
                    }
                }
                match parsed {
                    Ok(mut r) if node.is_some() => {
                        r.fallback = range.fallback;
                        ranges.push(r);
                    }
                    Ok(_) => {}
                    Err(()) => all_parsed = false,
                }
            }
            let other = match raw.other {
                Some(other) => {
                    if let Err(message) = owner_check(&other) {
                        problems.push(Problem::new("routing.other", message));
                    }
                    other
                }
                None => {
                    problems.push(Problem::new(
                        "routing.other",
                        "missing: the node for usernames that do not start with a..z \
                         (digits, non-ASCII)",
                    ));
                    String::new()
                }
            };
            for name in &raw.other_fallback {
                if let Err(message) = owner_check(name) {
                    problems.push(Problem::new("routing.other_fallback", message));
                }
            }
            if !all_parsed {
                return None; // gaps would only echo the broken range
            }
            RoutingMode::Ranges {
                ranges,
                other,
                other_fallback: raw.other_fallback,
            }
        }
        Some(other) => {
            problems.push(Problem::new(
                "routing.mode",
                format!("{other:?}: must be \"hash\" or \"ranges\""),
            ));
            return None;
        }
    };
    let ranges_mode = matches!(mode, RoutingMode::Ranges { .. });
    match RoutingTable::new(mode) {
        Ok(table) => Some(table),
        Err(errors) => {
            let key = if ranges_mode {
                "routing.ranges"
            } else {
                "routing"
            };
            for message in errors {
                // `other` missing is already reported against routing.other.
                if !message.contains("(other)") {
                    problems.push(Problem::new(key, message));
                }
            }
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use crate::test_support::*;

    #[test]
    fn hash_key_problems() {
        assert_problem(
            &changed("hash_key = \"000102030405060708090a0b0c0d0e0f\"\n", ""),
            "routing.hash_key",
            "missing",
        );
        for bad in [
            "0001",
            "zz0102030405060708090a0b0c0d0e0f",
            "000102030405060708090a0b0c0d0e0f00",
        ] {
            assert_problem(
                &changed("\"000102030405060708090a0b0c0d0e0f\"", &format!("{bad:?}")),
                "routing.hash_key",
                "must be 32 hex digits",
            );
        }
        assert_problem(
            &changed("mode = \"hash\"", "mode = \"modulo\""),
            "routing.mode",
            "\"modulo\"",
        );
    }

    fn ranges(ranges: &[(&str, &str)], other: &str) -> String {
        let mut routing = format!("mode = \"ranges\"\nother = {other:?}\n");
        for (letters, node) in ranges {
            routing.push_str(&format!(
                "[[routing.ranges]]\nletters = {letters:?}\nnode = {node:?}\n"
            ));
        }
        changed("mode = \"hash\"\n", "").replace("0e0f\"\n", &format!("0e0f\"\n{routing}"))
    }

    #[test]
    fn ranges_mode_loads() {
        let config = parse(&ranges(&[("A-M", "slave1"), ("n-z", "slave2")], "slave2")).unwrap();
        assert_eq!(config.routing.owner_of("Nina").unwrap(), "slave2");
        assert_eq!(config.routing.owner_of("mike").unwrap(), "slave1");
        assert_eq!(config.routing.owner_of("42").unwrap(), "slave2");

        // A crowded letter split at a prefix (case-insensitive, as letters are).
        let config = parse(&ranges(
            &[("a-r", "slave1"), ("S-SM", "slave2"), ("sn-z", "slave1")],
            "slave2",
        ))
        .unwrap();
        assert_eq!(config.routing.owner_of("Smith").unwrap(), "slave2");
        assert_eq!(config.routing.owner_of("snow").unwrap(), "slave1");
        assert_problem(
            &ranges(&[("a-r", "slave1"), ("s1-z", "slave2")], "slave2"),
            "routing.ranges[1].letters",
            "is not a range of letters or prefixes",
        );
    }

    #[test]
    fn ranges_gap_overlap_and_unknown_nodes() {
        let text = ranges(
            &[("a-g", "slave1"), ("f-m", "slave2"), ("q-z", "slave2")],
            "slave1",
        );
        assert_problem(
            &text,
            "routing.ranges",
            "ranges a-g and f-m overlap on f..g",
        );
        assert_problem(
            &text,
            "routing.ranges",
            "letters n..p are not covered by any range",
        );
        let text = ranges(&[("a-m", "slave9"), ("n-z", "master")], "ghost");
        assert_problem(
            &text,
            "routing.ranges[0].node",
            "no [[node]] is named \"slave9\"",
        );
        assert_problem(&text, "routing.ranges[1].node", "\"master\" is the master");
        assert_problem(&text, "routing.other", "no [[node]] is named \"ghost\"");
        let text = ranges(&[("a-m", "slave1"), ("n-", "slave2")], "slave1");
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].key, "routing.ranges[1].letters");
        assert!(
            found[0]
                .message
                .contains("is not a range of letters or prefixes")
        );
        assert_problem(
            &ranges(&[("m-a", "slave1"), ("n-z", "slave2")], "slave1"),
            "routing.ranges[0].letters",
            "runs backwards (write \"a-m\")",
        );
        let text = ranges(&[("a-z", "slave1")], "slave1").replace("other = \"slave1\"\n", "");
        assert_problem(&text, "routing.other", "missing");
        assert_eq!(problems(&text).len(), 1);
    }

    #[test]
    fn ranges_fallback_lists() {
        let text = ranges(&[("a-m", "slave1"), ("n-z", "slave2")], "slave2")
            .replace(
                "node = \"slave1\"\n",
                "node = \"slave1\"\nfallback = [\"slave2\"]\n",
            )
            .replace(
                "other = \"slave2\"\n",
                "other = \"slave2\"\nother_fallback = [\"slave1\"]\n",
            );
        let config = parse(&text).unwrap();
        assert_eq!(config.routing.ranked("mike"), ["slave1", "slave2"]);
        assert_eq!(config.routing.ranked("nina"), ["slave2"]);
        assert_eq!(config.routing.ranked("42"), ["slave2", "slave1"]);
        assert_problem(
            &text.replace(
                "fallback = [\"slave2\"]",
                "fallback = [\"master\", \"slave7\"]",
            ),
            "routing.ranges[0].fallback",
            "\"master\" is the master",
        );
        assert_problem(
            &text.replace("fallback = [\"slave2\"]", "fallback = [\"slave1\"]"),
            "routing.ranges",
            "a-m: its fallback lists its own node slave1",
        );
        assert_problem(
            &text.replace(
                "other_fallback = [\"slave1\"]",
                "other_fallback = [\"nobody\"]",
            ),
            "routing.other_fallback",
            "no [[node]] is named \"nobody\"",
        );
    }
}
