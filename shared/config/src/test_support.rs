//! Helpers for the tests of every module: a sample farm config (`HEAD` + `NODES`), and ways to
//! load it, change it and look for the problems it has.

use std::path::{Path, PathBuf};

use crate::{ConfigError, FarmConfig, Problem};

/// Everything but the nodes; TLS generated so that no file has to exist.
pub(crate) const HEAD: &str = r#"
domain = "example.net"
secret = "s3cret"
[tls]
generate = true
[routing]
mode = "hash"
hash_key = "000102030405060708090a0b0c0d0e0f"
"#;

pub(crate) const NODES: &str = r#"
[[node]]
name = "master"
role = "master"
c2s = "127.0.0.1:5222"
farm = "127.0.0.1:7100"
s2s = "127.0.0.1:5269"

[[node]]
name = "slave1"
role = "slave"
c2s = "127.0.0.1:5322"
farm = "127.0.0.1:7101"

[[node]]
name = "slave2"
role = "slave"
weight = 2
c2s = "127.0.0.1:5422"
farm = "127.0.0.1:7102"
"#;

pub(crate) fn parse(text: &str) -> Result<FarmConfig, ConfigError> {
    FarmConfig::from_str(text, Path::new("config.toml"), None)
}

pub(crate) fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

/// Asserts that `text` has a problem at `key` whose message contains `fragment`.
#[track_caller]
pub(crate) fn assert_problem(text: &str, key: &str, fragment: &str) {
    let problems = problems(text);
    assert!(
        problems
            .iter()
            .any(|p| p.key == key && p.message.contains(fragment)),
        "no {key:?} problem containing {fragment:?} in {problems:#?}"
    );
}

pub(crate) fn with_nodes(head: &str) -> String {
    format!("{head}{NODES}")
}

/// HEAD + NODES with `from` replaced by `to` (exactly once).
pub(crate) fn changed(from: &str, to: &str) -> String {
    let text = with_nodes(HEAD);
    assert_eq!(text.matches(from).count(), 1, "{from:?}");
    text.replacen(from, to, 1)
}

/// A scratch directory of our own under the system temp dir.
pub(crate) fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "jabberfarm-config-test-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(crate) fn conf(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../conf")
        .join(name)
}
