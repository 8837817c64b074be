//! Golden vectors for the routing rule (DESIGN.md D2): a fixed table and usernames with their
//! owners, in `data/golden_routing.txt`. Every node of a farm must route alike, including nodes
//! built from different versions, so this file is frozen: a failure here means the rule changed.

use jabberfarm_proto::routing::{RoutingMode, RoutingTable, SlaveWeight};

const VECTORS: &str = include_str!("data/golden_routing.txt");

fn golden_table() -> Result<RoutingTable, Vec<String>> {
    let key: [u8; 16] = core::array::from_fn(|i| i as u8);
    let slave = |name: &str, weight| SlaveWeight {
        name: name.to_owned(),
        weight,
    };
    RoutingTable::new(RoutingMode::Hash {
        key,
        slaves: vec![slave("slave1", 1), slave("slave2", 1), slave("slave3", 2)],
    })
}

#[test]
fn golden_vectors() -> Result<(), String> {
    let table = golden_table().map_err(|e| e.join("; "))?;
    let mut checked = 0;
    let mut fingerprint = None;
    let mut wrong = Vec::new();
    for line in VECTORS.lines() {
        if let Some(expected) = line.strip_prefix("# fingerprint ") {
            fingerprint = Some(expected);
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (username, expected) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("malformed line {line:?}"))?;
        let actual = table.owner_of(username).unwrap_or("-");
        if actual != expected {
            wrong.push(format!("{username}: expected {expected}, got {actual}"));
        }
        checked += 1;
    }
    assert!(
        wrong.is_empty(),
        "the routing rule changed:\n{}",
        wrong.join("\n")
    );
    assert!(checked >= 50, "only {checked} vectors");
    assert_eq!(
        fingerprint,
        Some(table.fingerprint()),
        "the fingerprint changed"
    );
    Ok(())
}
