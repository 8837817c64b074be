//! `[rebalance]`: how fast the farm moves users when the routing table changes (issue 13;
//! docs/rebalancing.md).

use serde::Deserialize;

use crate::Problem;

/// How users move to their new owner after a routing change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebalanceConfig {
    /// Users one node hands over per second (sessions moved, and their data when it lives on
    /// the slaves). Bounds the load a change puts on the farm and on the clients reconnecting.
    pub users_per_second: u32,
}

/// Default [`RebalanceConfig::users_per_second`].
pub const DEFAULT_USERS_PER_SECOND: u32 = 100;
/// Above this a move is a stampede, not a rebalance: clients reconnecting at once.
const MAX_USERS_PER_SECOND: u64 = 100_000;

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig {
            users_per_second: DEFAULT_USERS_PER_SECOND,
        }
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct RawRebalance {
    users_per_second: Option<u64>,
}

pub(crate) fn rebalance(raw: RawRebalance, problems: &mut Vec<Problem>) -> RebalanceConfig {
    let users_per_second = match raw.users_per_second {
        None => DEFAULT_USERS_PER_SECOND,
        Some(n @ 1..=MAX_USERS_PER_SECOND) => u32::try_from(n).unwrap_or(u32::MAX),
        Some(n) => {
            problems.push(Problem::new(
                "rebalance.users_per_second",
                format!("{n}: must be 1 to {MAX_USERS_PER_SECOND}"),
            ));
            DEFAULT_USERS_PER_SECOND
        }
    };
    RebalanceConfig { users_per_second }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use crate::test_support::*;

    #[test]
    fn rate_default_value_and_bounds() {
        let c = parse(&with_nodes(HEAD)).unwrap();
        assert_eq!(c.rebalance.users_per_second, 100);
        let c = parse(&with_nodes(&format!(
            "{HEAD}[rebalance]\nusers_per_second = 2500\n"
        )))
        .unwrap();
        assert_eq!(c.rebalance.users_per_second, 2500);
        for bad in ["0", "100001"] {
            assert_problem(
                &with_nodes(&format!("{HEAD}[rebalance]\nusers_per_second = {bad}\n")),
                "rebalance.users_per_second",
                "must be 1 to 100000",
            );
        }
        assert_problem(
            &with_nodes(&format!("{HEAD}[rebalance]\nusers_per_sec = 5\n")),
            "rebalance.users_per_sec",
            "known keys here: users_per_second",
        );
    }
}
