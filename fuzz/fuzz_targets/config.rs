//! The config loader (`FarmConfig::from_str` in `shared/config/src/lib.rs`, what
//! `jabberfarm check` and every node run on the TOML file).
//!
//! Input: the file's text (not UTF-8: skipped, `FarmConfig::load` refuses it before parsing).
//! It is loaded as `<dir>/farm.toml` with `<dir>/data` as the data dir, where `<dir>` holds
//! the files a config may name: `farm.secret`, `db.pw`, `service.pw`, `ca.pem`, and
//! `data/tls/{cert,key,ca}.pem`.
//!
//! Properties:
//! - no panic;
//! - an error is either TOML's (with a message) or a non-empty list of problems, each naming
//!   what is wrong;
//! - a config that loads has exactly one master and at least one slave, unique node names, a
//!   routing table over its slaves only, certificate files that `check_files` accepts, and
//!   loads again to an equal config.

#![no_main]

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::LazyLock;

use jabberfarm_config::{ConfigError, FarmConfig, Role};
use libfuzzer_sys::fuzz_target;

/// The directory the config is loaded from, with the files it may refer to.
static DIR: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join("jabberfarm-fuzz-config");
    let files = [
        ("farm.secret", "fuzz-farm-secret\n"),
        ("db.pw", "s3cr3t\n"),
        ("service.pw", "svc-secret\n"),
        ("empty.secret", "\n"),
        ("ca.pem", ""),
        ("data/tls/cert.pem", ""),
        ("data/tls/key.pem", ""),
        ("data/tls/ca.pem", ""),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
        }
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    dir
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = DIR.join("farm.toml");
    let data_dir = DIR.join("data");
    let loaded = FarmConfig::from_str(text, &source, Some(&data_dir));
    match &loaded {
        Ok(cfg) => check(cfg),
        Err(ConfigError::Toml { message, .. }) => {
            assert!(!message.trim().is_empty(), "a TOML error without a message");
        }
        Err(ConfigError::Invalid { problems, .. }) => {
            assert!(!problems.is_empty(), "refused without naming a problem");
            for p in problems {
                assert!(
                    !p.message.trim().is_empty(),
                    "a problem without a message: {p:?}"
                );
            }
        }
        Err(e @ ConfigError::Io { .. }) => panic!("from_str read the config file itself: {e}"),
    }
    // What `jabberfarm check` prints.
    if let Err(e) = &loaded {
        assert!(!e.to_string().is_empty());
    }
    if let Ok(cfg) = loaded {
        let again = FarmConfig::from_str(text, &source, Some(&data_dir));
        assert!(
            again.as_ref().is_ok_and(|a| *a == cfg),
            "the same text loaded twice differs: {again:?}"
        );
    }
});

fn check(cfg: &FarmConfig) {
    let masters = cfg.nodes.iter().filter(|n| n.role == Role::Master).count();
    assert_eq!(masters, 1, "{masters} masters in {:?}", cfg.nodes);
    assert_eq!(cfg.master().role, Role::Master);
    let slaves: HashSet<&str> = cfg.slaves().map(|n| n.name.as_str()).collect();
    assert!(!slaves.is_empty(), "a config without slaves loaded");
    let names: HashSet<&str> = cfg.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names.len(), cfg.nodes.len(), "node names repeat");
    for node in cfg.routing.nodes() {
        assert!(slaves.contains(node), "routing names {node:?}, not a slave");
    }
    for user in ["juliet", "romeo", "0day", "zz"] {
        let owner = cfg
            .routing
            .owner_of(user)
            .unwrap_or_else(|e| panic!("no owner for {user:?}: {e}"));
        assert!(
            slaves.contains(owner),
            "{user:?} routed to {owner:?}, not a slave"
        );
    }
    assert!(
        cfg.check_files().is_empty(),
        "loaded, but check_files objects: {:?}",
        cfg.check_files()
    );
}
