//! Live rebalancing (issue 13), the parts that exist so far: `jabberfarm plan` counts what a
//! routing change moves, from the stores of a farm that has run, with real users and data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{BIN, Raw, TestFarm};

/// `a-m` on slave1, `n-z` on slave2, the rest on slave1.
const OLD_RANGES: &str = "mode = \"ranges\"\nother = \"slave1\"\n\
     [[routing.ranges]]\nletters = \"a-m\"\nnode = \"slave1\"\n\
     [[routing.ranges]]\nletters = \"n-z\"\nnode = \"slave2\"\n";

/// alice and every m-name go to slave2; a split letter on the way (`b-ls`, `lt-l`).
const NEW_RANGES: &str = "mode = \"ranges\"\nother = \"slave1\"\n\
     [[routing.ranges]]\nletters = \"a\"\nnode = \"slave2\"\n\
     [[routing.ranges]]\nletters = \"b-ls\"\nnode = \"slave1\"\n\
     [[routing.ranges]]\nletters = \"lt-l\"\nnode = \"slave1\"\n\
     [[routing.ranges]]\nletters = \"m-z\"\nnode = \"slave2\"\n\
     [rebalance]\nusers_per_second = 2\n";

const HASH: &str = "mode = \"hash\"\nhash_key = \"000102030405060708090a0b0c0d0e0f\"\n";

#[test]
fn plan_counts_users_and_their_data_from_the_stores() {
    let farm = TestFarm::start_edited(2, |text| text.replace(HASH, OLD_RANGES));
    for user in ["alice", "bob", "mike", "max", "nina", "zoe"] {
        farm.add_user(user, "pw");
    }
    // alice (slave1) has a roster item and a vCard; mike (slave1) two offline messages.
    let mut alice = Raw::login(farm.slaves[0].c2s, "alice", "pw", "r");
    alice.send(
        "<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='nina@localhost'/></query></iq>",
    );
    alice.wait_for("id='r1'", 5);
    alice.send("<iq type='set' id='v1'><vCard xmlns='vcard-temp'><FN>Alice</FN></vCard></iq>");
    alice.wait_for("id='v1'", 5);
    for id in ["m1", "m2"] {
        alice.send(&format!(
            "<message to='mike@localhost' type='chat' id='{id}'><body>later</body></message>"
        ));
    }
    alice.sync("localhost");

    let new = farm.config.with_file_name("new.toml");
    let text = std::fs::read_to_string(&farm.config).unwrap();
    std::fs::write(&new, text.replace(OLD_RANGES, NEW_RANGES)).unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["plan", "--config"])
            .arg(&new)
            .arg("--from")
            .arg(&farm.config)
            .arg("--data-dir")
            .arg(farm.data_dir())
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let text = run(&[]);
    println!("{text}");
    assert!(
        text.contains("6 accounts: 3 move (50.0 %), 3 stay"),
        "{text}"
    );
    assert!(text.contains("data lives on the slaves"), "{text}");
    // alice, max and mike go from slave1 to slave2 with their roster item, vCard and the two
    // offline messages.
    let row = text
        .lines()
        .find(|l| l.starts_with("slave1 "))
        .expect("a row for slave1 → slave2");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[..8],
        ["slave1", "slave2", "3", "-", "1", "0", "2", "1"],
        "{text}"
    );
    assert!(text.contains("stay: slave1 1, slave2 2"), "{text}");
    // Two users a second from the busiest node: 3 users take 2 s.
    assert!(text.contains("time at 2 users/s per node"), "{text}");
    assert!(text.contains(": 2 s"), "{text}");
    assert!(!text.contains("refused live"), "{text}");

    let json = run(&["--json"]);
    assert!(json.contains("\"users\": 6"), "{json}");
    assert!(json.contains("\"offline_messages\": 2"), "{json}");
    assert!(json.contains("\"online\": null"), "{json}");

    // A change a running farm cannot take is named.
    let text = std::fs::read_to_string(&new).unwrap();
    std::fs::write(
        &new,
        text.replace("domain = \"localhost\"", "domain = \"example.org\""),
    )
    .unwrap();
    let text = run(&[]);
    assert!(
        text.contains("refused live: domain localhost → example.org"),
        "{text}"
    );
}
