//! Unknown keys: every key in the file that no `Raw*` struct declares is a problem, with a "did
//! you mean" hint. The known keys are read off the field lists serde derived for those structs,
//! so each is written down once.

use std::fmt;

use serde::de::DeserializeOwned;

use crate::farm::RawFarm;
use crate::limits::{RawAuthLimits, RawLimits};
use crate::nodes::RawNode;
use crate::rebalance::RawRebalance;
use crate::relay::RawRelay;
use crate::routing::{RawRange, RawRouting};
use crate::s2s::RawS2s;
use crate::storage::{RawStorage, storage_unknown_keys};
use crate::tls::RawTls;
use crate::{Problem, RawConfig};

/// Every key the file has that no struct above knows, each with its full name.
pub(crate) fn unknown_keys(doc: &toml::Table) -> Vec<Problem> {
    let mut problems = Vec::new();
    check_keys(doc, "", fields_of::<RawConfig>(), &mut problems);
    let sections = [
        ("tls", fields_of::<RawTls>()),
        ("limits", fields_of::<RawLimits>()),
        ("routing", fields_of::<RawRouting>()),
        ("storage", fields_of::<RawStorage>()),
        ("farm", fields_of::<RawFarm>()),
        ("s2s", fields_of::<RawS2s>()),
        ("relay", fields_of::<RawRelay>()),
        ("rebalance", fields_of::<RawRebalance>()),
        ("auth_limits", fields_of::<RawAuthLimits>()),
    ];
    for (name, fields) in sections {
        if let Some(toml::Value::Table(table)) = doc.get(name) {
            check_keys(table, name, fields, &mut problems);
        }
    }
    storage_unknown_keys(doc, &mut problems);
    let arrays = [
        (doc.get("node"), "node", fields_of::<RawNode>()),
        (
            doc.get("routing").and_then(|r| r.get("ranges")),
            "routing.ranges",
            fields_of::<RawRange>(),
        ),
    ];
    for (value, name, fields) in arrays {
        if let Some(toml::Value::Array(items)) = value {
            for (i, item) in items.iter().enumerate() {
                if let toml::Value::Table(table) = item {
                    check_keys(table, &format!("{name}[{i}]"), fields, &mut problems);
                }
            }
        }
    }
    problems
}

pub(crate) fn check_keys(
    table: &toml::Table,
    prefix: &str,
    known: &[&str],
    problems: &mut Vec<Problem>,
) {
    for key in table.keys() {
        if known.contains(&key.as_str()) {
            continue;
        }
        let full = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let hint = match known.iter().find(|k| edit_distance(k, key) <= 2) {
            Some(near) => format!("did you mean {near:?}?"),
            None => format!("known keys here: {}", known.join(", ")),
        };
        problems.push(Problem::new(full, format!("unknown key; {hint}")));
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The field names serde derived for `T`: a deserializer that only records what
/// `deserialize_struct` is asked for. Keeps the list of known keys in one place.
pub(crate) fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    #[derive(Debug)]
    struct Stop;
    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("field probe")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Stop
        }
    }

    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_support::*;

    #[test]
    fn unknown_keys_everywhere() {
        let text = with_nodes(HEAD)
            .replace("[tls]\n", "colour = 1\n[tls]\ncertificate = \"x\"\n")
            .replace("0e0f\"\n", "0e0f\"\n[[routing.ranges]]\nletter = \"a\"\n")
            + "[limits]\nmax_stanzas = 1\n";
        let problems = problems(&text);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "colour",
                "tls.certificate",
                "limits.max_stanzas",
                "routing.ranges[0].letter"
            ]
        );
        assert!(
            problems[0]
                .message
                .contains("known keys here: domain, secret")
        );
        assert!(problems[3].message.contains("did you mean \"letters\"?"));
    }

    #[test]
    fn field_probe_reads_the_serde_field_names() {
        assert_eq!(fields_of::<RawRange>(), ["letters", "node", "fallback"],);
        assert_eq!(
            fields_of::<RawTls>(),
            ["cert", "key", "generate", "required"],
        );
    }
}
