//! Live rebalancing (issue 13), end to end on real processes: `jabberfarm plan` counts what a
//! routing change moves from the stores; SIGHUP or `jabberfarm reload` at the master hands the
//! new table to every node; connected users move (raw clients, xmpp.js following the redirect,
//! slixmpp relayed again) and their data goes with them on SQLite farms; a killed target slave
//! finishes the move when it comes back; slaves join and leave; messages sent to moving users
//! during the whole move arrive exactly once (SQLite and MariaDB).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::agents::Agent;
use common::{BIN, HEADER, Raw, TestFarm, plain_auth};

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

use common::HASH_ROUTING as HASH;

/// The test farm's config with its data in the MariaDB database `url` (central: users can
/// move without their data) and `routing` for its hash table.
fn central(text: String, url: &str, routing: &str) -> String {
    common::with_central_data(&text, url).replace(HASH, routing)
}

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
    // zoe (slave2) asks to see alice's presence: a request waiting for alice's answer.
    let mut zoe = Raw::login(farm.slaves[1].c2s, "zoe", "pw", "r");
    zoe.send("<presence to='alice@localhost' type='subscribe'/>");
    zoe.sync("alice@localhost");

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
    // alice, max and mike go from slave1 to slave2 with their roster item, zoe's request, the
    // vCard and the two offline messages.
    let row = text
        .lines()
        .find(|l| l.starts_with("slave1 "))
        .expect("a row for slave1 → slave2");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[..8],
        ["slave1", "slave2", "3", "1", "1", "1", "2", "1"],
        "{text}"
    );
    assert!(text.contains("stay: slave1 1, slave2 2"), "{text}");
    // Two users a second from the busiest node: 3 users take 2 s.
    assert!(text.contains("time at 2 users/s per node"), "{text}");
    assert!(text.contains(": 2 s"), "{text}");

    let json = run(&["--json"]);
    assert!(json.contains("\"users\": 6"), "{json}");
    assert!(json.contains("\"offline_messages\": 2"), "{json}");
    // alice is online: the running farm counts her.
    assert!(json.contains("\"online\": 1"), "{json}");
    assert!(
        text.contains("online now: counted by the running farm (slave1, slave2)"),
        "{text}"
    );
    let offline = run(&["--offline"]);
    assert!(
        offline.contains("online now: not asked (--offline)"),
        "{offline}"
    );
    // Without --from the running farm is asked: the master for its table, each slave for what
    // leaves its own file. The same counts, from the nodes themselves.
    let out = Command::new(BIN)
        .args(["plan", "--config"])
        .arg(&new)
        .output()
        .unwrap();
    let live = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{live}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(live.contains("(the running farm) → "), "{live}");
    let live_row = live
        .lines()
        .find(|l| l.starts_with("slave1 "))
        .expect("a row for slave1 → slave2");
    assert_eq!(live_row, row, "{live}");
    assert!(live.contains("stay: slave1 1, slave2 2"), "{live}");
    assert!(live.contains("6 accounts: 3 move"), "{live}");
    assert!(json.contains("\"refused\": []"), "{json}");

    // The running farm takes it, and the users go with their data: alice, online, is sent to
    // slave2, where her roster and vCard are; mike finds his offline messages there.
    std::fs::copy(&new, &farm.config).unwrap();
    let (ok, said) = jabberfarm(&farm, &["reload"]);
    assert!(ok, "{said}");
    farm.wait_log("slave2 runs topology epoch 1", 10);
    let got = alice.wait_closed(10);
    let slave2 = farm.slaves[1].c2s;
    assert!(got.contains(&format!("{slave2}</see-other-host>")), "{got}");
    let mut alice = Raw::login(slave2, "alice", "pw", "r");
    alice.send("<iq type='get' id='r2'><query xmlns='jabber:iq:roster'/></iq>");
    let roster = alice.wait_for("id='r2'", 5);
    assert!(roster.contains("jid='nina@localhost'"), "{roster}");
    alice.send("<iq type='get' id='v2'><vCard xmlns='vcard-temp'/></iq>");
    let vcard = alice.wait_for("id='v2'", 5);
    assert!(vcard.contains("<FN>Alice</FN>"), "{vcard}");
    // zoe's request is still waiting for an answer: it comes again at alice's presence.
    alice.send("<presence/>");
    alice.wait_for(
        "<presence from='zoe@localhost' to='alice@localhost' type='subscribe'/>",
        5,
    );
    let mut mike = Raw::login(slave2, "mike", "pw", "r");
    mike.send("<presence/>");
    let got = mike.wait_for("later", 5);
    let got = if got.matches("later").count() < 2 {
        got + &mike.wait_for("later", 5)
    } else {
        got
    };
    assert_eq!(got.matches("<body>later</body>").count(), 2, "{got}");
    farm.wait_log("3 user(s) handed over with their data", 10);
    // Each account is on the slave the table names, once: nothing to move, nothing misplaced.
    let text = run(&[]);
    assert!(text.contains("6 accounts: 0 move"), "{text}");
    assert!(!text.contains("misplaced"), "{text}");
    // The old slave forgot them: it sends a login on without a password check of its own.
    assert_eq!(
        redirect_of(farm.slaves[0].c2s, "alice"),
        Some(slave2.to_string())
    );

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

/// Waits until `node`'s own log has `needle` at least `times` times.
fn wait_node_log(farm: &TestFarm, node: &str, needle: &str, times: usize) {
    let path = farm.dir.path().join(format!("node-{node}.log"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.matches(needle).count() >= times {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{node} never logged {needle:?} {times} time(s):\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where the node at `at` sends a login of `user` (its `<see-other-host/>`), or `None` when
/// it takes the login itself.
fn redirect_of(at: SocketAddr, user: &str) -> Option<String> {
    let mut c = Raw::connect(at);
    c.send(HEADER);
    c.wait_for("</stream:features>", 5);
    c.send(&plain_auth(user, "pw"));
    let got = c.wait_for("</", 5);
    let got = if got.contains("see-other-host") {
        got + &c.wait_closed(5)
    } else {
        got
    };
    let tag = "<see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>";
    let start = got.find(tag)? + tag.len();
    let end = got[start..].find("</see-other-host>")? + start;
    Some(got[start..end].to_owned())
}

/// Reload without a restart: SIGHUP at the master, the new table handed to every slave over
/// the farm links as the next epoch; logins follow it at the master and at the slaves; a slave
/// that restarts with the old file is brought up to date; a change that needs a restart is
/// refused with the reason, and the table in force stays.
#[test]
fn sighup_reloads_the_table_on_every_node() {
    // Redirects only: this test's client does not follow them, and the relay would take it.
    // The server lives as long as this test: dropping the last handle stops it.
    let db = jabberfarm_testkit::servers::shared_mariadb();
    let url = db.create_database("reload");
    let mut farm = TestFarm::start_processes_edited(2, |text| {
        central(text, &url, OLD_RANGES) + "\n[relay]\nredirect = \"always\"\n"
    });
    let (slave1, slave2) = (farm.slaves[0].c2s, farm.slaves[1].c2s);
    for user in ["mike", "nina"] {
        farm.add_user(user, "pw");
    }
    assert_eq!(
        redirect_of(farm.master.c2s, "mike"),
        Some(slave1.to_string())
    );
    let old = farm.config.with_file_name("old.toml");
    std::fs::copy(&farm.config, &old).unwrap();

    // mike is online at slave1.
    let mut mike = Raw::login(slave1, "mike", "pw", "r");
    mike.sync("localhost");

    // m-z moves to slave2.
    farm.edit_config(|text| text.replace(OLD_RANGES, NEW_RANGES));
    farm.signal_node("master", "HUP");
    wait_node_log(&farm, "master", "reload: topology epoch 1", 1);
    for slave in ["slave1", "slave2"] {
        wait_node_log(&farm, slave, "topology epoch 1 from master", 1);
        wait_node_log(
            &farm,
            "master",
            &format!("{slave} runs topology epoch 1"),
            1,
        );
    }
    assert_eq!(
        redirect_of(farm.master.c2s, "mike"),
        Some(slave2.to_string())
    );
    // His session is sent on to his new slave.
    let got = mike.wait_closed(10);
    assert!(got.contains(&format!("{slave2}</see-other-host>")), "{got}");
    // The old owner sends mike on too, and the new one takes him.
    assert_eq!(redirect_of(slave1, "mike"), Some(slave2.to_string()));
    assert_eq!(redirect_of(slave2, "nina"), None);

    // slave1 restarts with the file from before: the master hands it epoch 1 on link-up.
    farm.term_node("slave1");
    farm.start_node_with_config("slave1", &old);
    wait_node_log(&farm, "slave1", "topology epoch 1 from master", 2);
    assert_eq!(redirect_of(slave1, "mike"), Some(slave2.to_string()));

    // Another domain cannot be taken live: refused, named, and epoch 1 stays.
    farm.edit_config(|text| text.replace("domain = \"localhost\"", "domain = \"example.org\""));
    farm.signal_node("master", "HUP");
    wait_node_log(
        &farm,
        "master",
        "reload refused: domain localhost → example.org",
        1,
    );
    wait_node_log(&farm, "master", "the config in force stays (epoch 1)", 1);
    assert_eq!(
        redirect_of(farm.master.c2s, "mike"),
        Some(slave2.to_string())
    );
}

/// `jabberfarm ARGS --config <the farm's>`: exit success and what it printed.
fn jabberfarm(farm: &TestFarm, args: &[&str]) -> (bool, String) {
    farm.admin(args)
}

/// The status row of `node`, split into cells.
fn row(status: &str, node: &str) -> Vec<String> {
    status
        .lines()
        .find(|l| l.starts_with(&format!("{node} ")))
        .unwrap_or_else(|| panic!("no row for {node}:\n{status}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// `jabberfarm status` shows every node's epoch, table, links and sessions; `jabberfarm
/// reload` applies the file at the master and says what it did, or every reason it refused.
#[test]
fn status_and_reload_commands() {
    // The server lives as long as this test: dropping the last handle stops it.
    let db = jabberfarm_testkit::servers::shared_mariadb();
    let url = db.create_database("reload");
    let mut farm = TestFarm::start_processes_edited(2, |text| {
        central(text, &url, OLD_RANGES) + "\n[relay]\nredirect = \"always\"\n"
    });
    farm.add_user("mike", "pw");
    let mut mike = Raw::login(farm.slaves[0].c2s, "mike", "pw", "desk");
    mike.sync("localhost");

    let (ok, status) = jabberfarm(&farm, &["status"]);
    assert!(ok, "{status}");
    let master = row(&status, "master");
    assert_eq!(master[1..4], ["master", "up", "0"], "{status}");
    assert_eq!(master[5], "2/2", "{status}");
    assert_eq!(master[8], "0", "no relayed clients:\n{status}");
    let slave1 = row(&status, "slave1");
    assert_eq!(slave1[1..4], ["slave", "up", "0"], "{status}");
    assert_eq!(slave1[4], master[4], "one table:\n{status}");
    assert_eq!(
        slave1[5..8],
        ["2/2", "1", "1"],
        "mike's one session:\n{status}"
    );

    // The file changes: status says it is not running yet; reload applies it.
    farm.edit_config(|text| text.replace(OLD_RANGES, NEW_RANGES));
    let (_, status) = jabberfarm(&farm, &["status"]);
    assert!(status.contains("is not the one running"), "{status}");
    let (ok, said) = jabberfarm(&farm, &["reload"]);
    assert!(ok, "{said}");
    assert!(
        said.starts_with("reloaded: topology epoch 1, routing ")
            && said.contains("handed to 2 node(s)"),
        "{said}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status) = jabberfarm(&farm, &["status"]);
        let epochs: Vec<String> = ["master", "slave1", "slave2"]
            .iter()
            .map(|n| row(&status, n)[3].clone())
            .collect();
        if epochs == ["1", "1", "1"] {
            assert!(!status.contains("not the one running"), "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every node at epoch 1:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, said) = jabberfarm(&farm, &["reload"]);
    assert!(ok && said.contains("unchanged (epoch 1"), "{said}");

    // Refused: every reason printed, exit status 1, epoch 1 stays.
    farm.edit_config(|text| text.replace("domain = \"localhost\"", "domain = \"example.org\""));
    let (ok, said) = jabberfarm(&farm, &["reload"]);
    assert!(!ok, "{said}");
    assert!(
        said.contains("refused: domain localhost → example.org"),
        "{said}"
    );
    assert!(said.contains("the config in force stays"), "{said}");
    // A file with another secret cannot even ask: the farm does not know it.
    farm.edit_config(|text| text.replace("secret = \"test-secret\"", "secret = \"other\""));
    let (ok, said) = jabberfarm(&farm, &["reload"]);
    assert!(!ok && said.contains("the farm secret differs"), "{said}");
    farm.edit_config(|text| {
        text.replace("secret = \"other\"", "secret = \"test-secret\"")
            .replace("domain = \"example.org\"", "domain = \"localhost\"")
    });

    // A node that is down is shown so, and the status fails.
    farm.kill_node("slave2");
    let (ok, status) = jabberfarm(&farm, &["status"]);
    assert!(!ok, "{status}");
    assert_eq!(row(&status, "slave2")[2], "down", "{status}");
    assert_eq!(row(&status, "slave1")[3], "1", "{status}");
}

/// Connected users move after a reload (data central in MariaDB): a client that logged in at
/// its slave is sent to the new one with `<see-other-host/>`, one relayed by the master gets
/// `<reset/>` and is relayed to the new one when it comes back; a message sent meanwhile waits
/// offline at the new owner and arrives at the next login.
#[test]
fn connected_users_move_to_their_new_slave() {
    let server = jabberfarm_testkit::servers::shared_mariadb();
    let url = server.create_database("move");
    let mut farm = TestFarm::start_with_storage(2, &common::mysql_storage(&url));
    farm.restart_with_config(|text| {
        text.replace(HASH, OLD_RANGES) + "\n[relay]\nredirect = \"never\"\n"
    });
    for user in ["mike", "max", "nina"] {
        farm.add_user(user, "pw");
    }
    let (master, slave1, slave2) = (farm.master.c2s, farm.slaves[0].c2s, farm.slaves[1].c2s);
    let online = |at, user: &str| {
        let mut c = Raw::login(at, user, "pw", "r");
        c.send("<presence/>");
        c.wait_for("<presence", 5);
        c
    };
    let mut direct = online(slave1, "mike");
    let mut relayed = online(master, "max");
    let mut nina = online(slave2, "nina");
    let (_, status) = jabberfarm(&farm, &["status"]);
    assert_eq!(row(&status, "slave1")[6..8], ["2", "2"], "{status}");

    farm.edit_config(|text| text.replace(OLD_RANGES, NEW_RANGES));
    // The plan, asked of the running farm (central data: counted from the database, the
    // online users by their slaves): mike and max move, both online.
    let (ok, plan) = jabberfarm(&farm, &["plan"]);
    assert!(ok, "{plan}");
    assert!(plan.contains("data is central"), "{plan}");
    assert_eq!(
        row(&plan, "slave1")[..4],
        ["slave1", "slave2", "2", "2"],
        "{plan}"
    );
    let (ok, said) = jabberfarm(&farm, &["reload"]);
    assert!(ok, "{said}");
    let got = direct.wait_closed(10);
    assert!(
        got.contains(&format!(
            "<see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{slave2}</see-other-host>"
        )),
        "{got}"
    );
    let got = relayed.wait_closed(10);
    assert!(
        got.contains("<reset xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "{got}"
    );
    farm.wait_log("moving 2 connected user(s) to their new slaves", 5);

    // Meanwhile: to the new owner, kept offline there.
    nina.send(
        "<message to='mike@localhost' type='chat' id='m1'><body>where are you?</body></message>",
    );
    nina.sync("localhost");
    let mut direct = Raw::login(slave2, "mike", "pw", "r");
    direct.send("<presence/>");
    direct.wait_for("where are you?", 5);
    // The relayed client comes back to the master, which relays it to slave2 now.
    let _relayed = online(master, "max");
    let (_, status) = jabberfarm(&farm, &["status"]);
    assert_eq!(row(&status, "slave1")[6..8], ["0", "0"], "{status}");
    assert_eq!(row(&status, "slave2")[6..8], ["3", "3"], "{status}");
    assert_eq!(
        row(&status, "slave1")[9],
        "0",
        "nothing left to move:\n{status}"
    );
}

/// slave3 takes t-z (from slave2); then slave1 leaves and slave2 takes its a-m.
const JOIN_RANGES: &str = "mode = \"ranges\"\nother = \"slave1\"\n\
     [[routing.ranges]]\nletters = \"a-m\"\nnode = \"slave1\"\n\
     [[routing.ranges]]\nletters = \"n-s\"\nnode = \"slave2\"\n\
     [[routing.ranges]]\nletters = \"t-z\"\nnode = \"slave3\"\n";
const LEAVE_RANGES: &str = "mode = \"ranges\"\nother = \"slave2\"\n\
     [[routing.ranges]]\nletters = \"a-s\"\nnode = \"slave2\"\n\
     [[routing.ranges]]\nletters = \"t-z\"\nnode = \"slave3\"\n";

/// The config text without the `[[node]]` entry of `name`.
fn without_node(text: &str, name: &str) -> String {
    let start = text
        .find(&format!("[[node]]\nname = \"{name}\"\n"))
        .unwrap_or_else(|| panic!("no node {name} in:\n{text}"));
    let end = text[start + 1..]
        .find("\n[")
        .map_or(text.len(), |e| start + 1 + e + 1);
    format!("{}{}", &text[..start], &text[end..])
}

/// `jabberfarm status` until `ready` holds for its output (at most 20 s).
fn status_until(farm: &TestFarm, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, status) = jabberfarm(farm, &["status"]);
        if ready(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "never {what}:\n{status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Slaves join and leave at run time (data central in MariaDB): a new `[[node]]` started and
/// reloaded takes its share (its users' sessions are sent to it, links to it come up, messages
/// reach it); a removed slave sends its users on, then stops by itself.
#[test]
fn slaves_join_and_leave_while_users_are_online() {
    let db = jabberfarm_testkit::servers::shared_mariadb();
    let url = db.create_database("grow");
    join_and_leave(TestFarm::start_processes_edited(2, |text| {
        central(text, &url, OLD_RANGES) + "\n[relay]\nredirect = \"always\"\n"
    }));
}

/// The same with the data on the slaves (SQLite): the users go with their accounts, and the
/// slave that leaves has handed all of its over before it stops (they log in on their new
/// slave with their password, which only the moved account knows).
#[test]
fn slaves_join_and_leave_with_their_data() {
    join_and_leave(TestFarm::start_processes_edited(2, |text| {
        text.replace(HASH, OLD_RANGES) + "\n[relay]\nredirect = \"always\"\n"
    }));
}

fn join_and_leave(mut farm: TestFarm) {
    for user in ["mike", "tina", "nina"] {
        farm.add_user(user, "pw");
    }
    let (slave1, slave2) = (farm.slaves[0].c2s, farm.slaves[1].c2s);
    let mut mike = Raw::login(slave1, "mike", "pw", "r");
    mike.sync("localhost");
    let mut tina = Raw::login(slave2, "tina", "pw", "r");
    tina.sync("localhost");

    // slave3 joins: in the file, started, reloaded.
    let name = farm.add_slave();
    assert_eq!(name, "slave3");
    let slave3 = farm.slaves[2].c2s;
    farm.edit_config(|text| text.replace(OLD_RANGES, JOIN_RANGES));
    farm.start_node("slave3");
    let (ok, said) = jabberfarm(&farm, &["reload"]);
    assert!(ok, "{said}");
    let got = tina.wait_closed(10);
    assert!(got.contains(&format!("{slave3}</see-other-host>")), "{got}");
    let status = status_until(
        &farm,
        "every node at epoch 1, linked to the 3 others",
        |s| {
            ["master", "slave1", "slave2", "slave3"]
                .iter()
                .all(|n| s.lines().any(|l| l.starts_with(&format!("{n} "))))
                && ["master", "slave1", "slave2", "slave3"]
                    .iter()
                    .all(|n| row(s, n)[3] == "1" && row(s, n)[5] == "3/3")
        },
    );
    assert!(!status.contains("not the one running"), "{status}");
    assert_eq!(
        redirect_of(farm.master.c2s, "tina"),
        Some(slave3.to_string())
    );
    assert_eq!(redirect_of(slave3, "tina"), None);
    let mut tina = Raw::login(slave3, "tina", "pw", "r");
    tina.send("<presence/>");
    tina.wait_for("<presence", 5);
    mike.send(
        "<message to='tina@localhost' type='chat' id='j1'><body>welcome, slave3</body></message>",
    );
    tina.wait_for("welcome, slave3", 5);

    // slave1 leaves: out of the file, reloaded; mike is sent to slave2, slave1 stops.
    farm.edit_config(|text| without_node(&text.replace(JOIN_RANGES, LEAVE_RANGES), "slave1"));
    let (ok, said) = jabberfarm(&farm, &["reload"]);
    assert!(ok, "{said}");
    let got = mike.wait_closed(10);
    assert!(got.contains(&format!("{slave2}</see-other-host>")), "{got}");
    let exit = farm.wait_node_exit("slave1", 40);
    assert!(exit.success(), "slave1 stopped with {exit}");
    wait_node_log(&farm, "slave1", "removes slave1 from the farm", 1);
    let status = status_until(&farm, "slave1 gone from the links", |s| {
        row(s, "master")[5] == "2/2" && row(s, "slave2")[5] == "2/2"
    });
    assert!(!status.contains("slave1"), "{status}");
    let (ok, _) = jabberfarm(&farm, &["status"]);
    assert!(ok, "no node is down:\n{status}");
    assert_eq!(
        redirect_of(farm.master.c2s, "mike"),
        Some(slave2.to_string())
    );
    let mut mike = Raw::login(slave2, "mike", "pw", "r");
    mike.sync("localhost");
    mike.send(
        "<message to='tina@localhost' type='chat' id='j2'><body>moved to slave2</body></message>",
    );
    tina.wait_for("moved to slave2", 5);
}

/// Data on the slaves (SQLite): the slave that receives users is killed (-9) in the middle of
/// the move and restarted; the move completes, every user on its new slave with its offline
/// messages, each message once, and no account left on the old slave.
#[test]
fn a_data_move_survives_a_killed_target() {
    let mut farm = TestFarm::start_processes_edited(2, |text| {
        text.replace(HASH, OLD_RANGES) + "\n[relay]\nredirect = \"always\"\n"
    });
    // a-m on slave1; the new table gives every m-name and alice to slave2, 2 a second.
    let users: Vec<String> = (0..8).map(|i| format!("m{i}")).collect();
    for u in &users {
        farm.add_user(u, "pw");
    }
    farm.add_user("nina", "pw");
    let mut nina = Raw::login(farm.slaves[1].c2s, "nina", "pw", "r");
    for u in &users {
        nina.send(&format!(
            "<message to='{u}@localhost' type='chat'><body>for {u}</body></message>"
        ));
    }
    // Each user's owner has stored its message before the table changes (a ping to the
    // account is answered after what came before it for that user).
    for u in &users {
        nina.sync(&format!("{u}@localhost"));
    }
    drop(nina);

    farm.edit_config(|text| text.replace(OLD_RANGES, NEW_RANGES));
    let (ok, said) = jabberfarm(&farm, &["reload"]);
    assert!(ok, "{said}");
    wait_node_log(&farm, "slave1", "handing 8 user(s) and their data", 1);
    std::thread::sleep(Duration::from_millis(1200));
    farm.kill_node("slave2");
    farm.start_node("slave2");
    wait_node_log(&farm, "slave2", "topology epoch 1 from master", 1);
    let slave2 = farm.slaves[1].c2s;
    for u in &users {
        let mut c = Raw::login(slave2, u, "pw", "r");
        c.send("<presence/>");
        let got = c.wait_for(&format!("for {u}"), 15);
        c.sync("localhost");
        let got = got + &c.wait_for("sync", 5);
        assert_eq!(got.matches(&format!("for {u}<")).count(), 1, "{got}");
    }
    // Nothing left behind: a plan of the new table from the files moves nobody.
    let out = Command::new(BIN)
        .args(["plan", "--config"])
        .arg(&farm.config)
        .arg("--from")
        .arg(&farm.config)
        .arg("--data-dir")
        .arg(farm.data_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("9 accounts: 0 move"), "{text}");
    assert!(!text.contains("misplaced"), "{text}");
}

/// Real clients move with their data (SQLite on each slave, the default; `[relay] redirect =
/// "auto"`): xmpp.js, which follows redirects, is sent to its new slave with
/// `<see-other-host/>` and logs in there by itself; slixmpp, which came in through the master's
/// relay, gets `<reset/>`, reconnects to the master as an application does, and is relayed to
/// its new slave. Both find their roster there; a user who was offline finds the message kept
/// for it on its old slave.
#[test]
fn real_clients_move_with_their_data() {
    let mut farm = TestFarm::start_edited(2, |text| text.replace(HASH, OLD_RANGES));
    for user in ["mia", "max", "mo", "nina"] {
        farm.add_user(user, "pw");
    }
    let (slave2, master) = (farm.slaves[1].c2s, farm.master.c2s);
    let mut mia = Agent::xmppjs(&farm, "mia", "mia", "pw", "js");
    let mut max = Agent::slixmpp_at(&farm, "max", "max", "pw", "slix", master, &["--reconnect"]);
    for a in [&mut mia, &mut max] {
        a.cmd("roster_add", &[("jid", "nina@localhost"), ("name", "Nina")]);
    }
    let mut nina = Raw::login(slave2, "nina", "pw", "r");
    nina.send("<message to='mo@localhost' type='chat' id='o1'><body>kept for mo</body></message>");
    nina.sync("localhost");

    farm.edit_config(|text| text.replace(OLD_RANGES, NEW_RANGES));
    let (ok, said) = jabberfarm(&farm, &["reload"]);
    assert!(ok, "{said}");
    let again = mia.expect("mia online again", |e| e.kind() == "reconnected");
    assert_eq!(
        again.num("port"),
        Some(f64::from(slave2.port())),
        "mia on slave2: {again:?}"
    );
    let again = max.expect("max online again", |e| e.kind() == "reconnected");
    assert_eq!(
        again.num("port"),
        Some(f64::from(master.port())),
        "{again:?}"
    );
    for a in [&mut mia, &mut max] {
        let roster = a.roster();
        assert_eq!(
            roster,
            vec![("nina@localhost".to_owned(), "none".to_owned(), None)],
            "the roster came along"
        );
        a.cmd("presence", &[]);
    }
    // Both are served by slave2 now: messages from nina reach them there.
    for (a, to) in [(&mut mia, "mia"), (&mut max, "max")] {
        nina.send(&format!(
            "<message to='{to}@localhost' type='chat'><body>hello {to}</body></message>"
        ));
        a.expect("nina's message", |e| {
            e.kind() == "message" && e.get("body") == Some(&*format!("hello {to}"))
        });
    }
    let (_, status) = jabberfarm(&farm, &["status"]);
    assert_eq!(row(&status, "slave1")[6], "0", "{status}");
    assert_eq!(row(&status, "slave2")[6], "3", "{status}");
    // mo was offline: the message waiting on slave1 waits on slave2 now.
    let mut mo = Agent::xmppjs(&farm, "mo", "mo", "pw", "js");
    mo.cmd("presence", &[]);
    let got = mo.expect("mo's offline message", |e| e.kind() == "message");
    assert_eq!(got.get("body"), Some("kept for mo"), "{got:?}");
    assert!(!got.null("delay_stamp"), "delivered from storage: {got:?}");
}

/// Moving users keep getting their messages, each once: data on the slaves (SQLite), eight
/// users online on slave1 move to slave2 at 2 a second while a user on slave1 and one on
/// slave2 send each of them a numbered message every 100 ms, from before the reload to after
/// the move. Each moved client follows its `<see-other-host/>` and logs in again; in the end
/// every message arrived exactly once and no sender got an error back.
#[test]
fn messages_to_moving_users_arrive_once() {
    messages_arrive_once(TestFarm::start_processes_edited(2, |text| {
        text.replace(HASH, OLD_RANGES) + "\n[relay]\nredirect = \"always\"\n"
    }));
}

/// The same with the data central (MariaDB): only the sessions move; what is sent meanwhile
/// waits offline at the new owner.
#[test]
fn messages_to_moving_users_arrive_once_with_central_data() {
    let db = jabberfarm_testkit::servers::shared_mariadb();
    let url = db.create_database("moving");
    messages_arrive_once(TestFarm::start_processes_edited(2, |text| {
        central(text, &url, OLD_RANGES) + "\n[relay]\nredirect = \"always\"\n"
    }));
}

fn messages_arrive_once(mut farm: TestFarm) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    const ROUNDS: usize = 60;
    let movers: Vec<String> = (0..8).map(|i| format!("m{i}")).collect();
    for u in movers.iter().map(String::as_str).chain(["bob", "nina"]) {
        farm.add_user(u, "pw");
    }
    let (slave1, slave2) = (farm.slaves[0].c2s, farm.slaves[1].c2s);
    let online = |at: SocketAddr, user: &str| {
        let mut c = Raw::login(at, user, "pw", "r");
        c.send("<presence/>");
        c.wait_for("<presence", 5);
        c
    };
    // Each receiver collects the bodies it gets, following its redirect when it is moved.
    let expected = 2 * ROUNDS;
    let receivers: Vec<_> = movers
        .iter()
        .map(|user| {
            let mut c = online(slave1, user);
            let user = user.clone();
            std::thread::spawn(move || {
                let mut bodies: Vec<String> = Vec::new();
                let mut buf = String::new();
                let mut moves = 0;
                while bodies.len() < expected {
                    let text = c.wait_until("messages", 30, |t| {
                        t.contains("</message>") || t.contains("</stream:stream>")
                    });
                    buf.push_str(&text);
                    while let Some(start) = buf.find("<body>") {
                        let Some(len) = buf[start..].find("</body>") else {
                            break;
                        };
                        bodies.push(buf[start + 6..start + len].to_owned());
                        buf.drain(..start + len + 7);
                    }
                    let tag = "<see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>";
                    if let Some(at) = buf.find(tag) {
                        let rest = &buf[at + tag.len()..];
                        let addr: SocketAddr = rest[..rest.find('<').unwrap()].parse().unwrap();
                        c = online(addr, &user);
                        buf.clear();
                        moves += 1;
                    }
                }
                (user, bodies, moves)
            })
        })
        .collect();
    let go = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = [("bob", slave1), ("nina", slave2)]
        .into_iter()
        .map(|(name, at)| {
            let mut c = Raw::login(at, name, "pw", "r");
            let (movers, go) = (movers.clone(), go.clone());
            std::thread::spawn(move || {
                while !go.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                for round in 0..ROUNDS {
                    for to in &movers {
                        c.send(&format!(
                            "<message to='{to}@localhost' type='chat'><body>{name}-{round}</body></message>"
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                c.sync("localhost");
                // Anything that came back is an error: a message refused.
                let back = c.wait_until("the end", 5, |_| true);
                assert!(!back.contains("type='error'"), "{name} got errors: {back}");
            })
        })
        .collect();

    go.store(true, Ordering::Release);
    std::thread::sleep(Duration::from_millis(500));
    farm.edit_config(|text| {
        // NEW_RANGES sets the rate: 2 users a second, so the move lasts about 4 s.
        text.replace(OLD_RANGES, NEW_RANGES)
    });
    let (ok, said) = jabberfarm(&farm, &["reload"]);
    assert!(ok, "{said}");
    for s in senders {
        s.join().unwrap();
    }
    for r in receivers {
        let (user, bodies, moves) = r.join().unwrap();
        assert_eq!(moves, 1, "{user} was moved once");
        let mut counts = std::collections::BTreeMap::new();
        for b in &bodies {
            *counts.entry(b.as_str()).or_insert(0) += 1;
        }
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "{user} got some twice: {twice:?}");
        assert_eq!(
            counts.len(),
            expected,
            "{user} got {} of {expected}",
            counts.len()
        );
    }
    assert_eq!(redirect_of(slave1, "m0"), Some(slave2.to_string()));
}

/// A user who logs in at its new slave before the old one has pushed it there is pulled on the
/// spot (data on the slaves): with one user a second to hand over, the last of eight logs in
/// at once, with its offline message, and its data is where it logged in.
#[test]
fn a_user_is_pulled_on_first_login() {
    let mut farm = TestFarm::start_processes_edited(2, |text| {
        text.replace(HASH, OLD_RANGES) + "\n[relay]\nredirect = \"always\"\n"
    });
    for i in 0..8 {
        farm.add_user(&format!("m{i}"), "pw");
    }
    farm.add_user("nina", "pw");
    let slave2 = farm.slaves[1].c2s;
    let mut nina = Raw::login(slave2, "nina", "pw", "r");
    nina.send("<message to='m7@localhost' type='chat'><body>pulled along</body></message>");
    nina.sync("localhost");
    farm.edit_config(|text| {
        text.replace(OLD_RANGES, NEW_RANGES)
            .replace("users_per_second = 2", "users_per_second = 1")
    });
    let (ok, said) = jabberfarm(&farm, &["reload"]);
    assert!(ok, "{said}");
    wait_node_log(&farm, "slave2", "topology epoch 1 from master", 1);
    let mut m7 = Raw::login(slave2, "m7", "pw", "r");
    m7.send("<presence/>");
    m7.wait_for("pulled along", 5);
    wait_node_log(&farm, "slave2", "m7's data arrived on first use", 1);
}

/// A stanza sent by a node that is behind on the table is sent on, not bounced: slave3 runs
/// the old table (it refused the change: it was restarted with its own listener moved), so
/// it sends a message for mike to slave1, which no longer owns him and passes it to slave2.
#[test]
fn a_node_behind_on_the_table_is_not_bounced() {
    const OLD3: &str = "mode = \"ranges\"\nother = \"slave3\"\n\
         [[routing.ranges]]\nletters = \"a-m\"\nnode = \"slave1\"\n\
         [[routing.ranges]]\nletters = \"n-z\"\nnode = \"slave2\"\n";
    const NEW3: &str = "mode = \"ranges\"\nother = \"slave3\"\n\
         [[routing.ranges]]\nletters = \"a-l\"\nnode = \"slave1\"\n\
         [[routing.ranges]]\nletters = \"m-s\"\nnode = \"slave2\"\n\
         [[routing.ranges]]\nletters = \"t-z\"\nnode = \"slave3\"\n";
    let mut farm = TestFarm::start_processes_edited(3, |text| {
        text.replace(HASH, OLD3) + "\n[relay]\nredirect = \"always\"\n"
    });
    for user in ["mike", "007", "tom"] {
        farm.add_user(user, "pw");
    }
    // slave3 comes back with its c2s listener elsewhere: it will refuse the change.
    let moved = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let own = farm.config.with_file_name("slave3.toml");
    let text = std::fs::read_to_string(&farm.config).unwrap();
    let c2s = format!("c2s = \"{}\"", farm.slaves[2].c2s);
    assert!(text.contains(&c2s), "{text}");
    std::fs::write(&own, text.replace(&c2s, &format!("c2s = \"{moved}\""))).unwrap();
    farm.term_node("slave3");
    farm.slaves[2].c2s = moved;
    farm.start_node_with_config("slave3", &own);

    farm.edit_config(|text| text.replace(OLD3, NEW3));
    let (ok, said) = jabberfarm(&farm, &["reload"]);
    assert!(ok, "{said}");
    wait_node_log(&farm, "slave3", "refused", 1);
    // Its links are up again at its old epoch (the others run epoch 1).
    for link in ["slave1 <-> slave3 up", "slave2 <-> slave3 up"] {
        wait_node_log(&farm, "slave3", link, 2);
    }
    wait_node_log(&farm, "slave2", "topology epoch 1 from master", 1);
    wait_node_log(&farm, "slave1", "topology epoch 1 from master", 1);
    let mut mike = Raw::login(farm.slaves[1].c2s, "mike", "pw", "r");
    mike.send("<presence/>");
    mike.wait_for("<presence", 5);
    let mut bond = Raw::login(moved, "007", "pw", "r");
    bond.send(
        "<message to='mike@localhost' type='chat' id='b1'><body>still routed</body></message>",
    );
    bond.sync("localhost");
    mike.wait_for("still routed", 5);
    bond.sync("localhost");
    let back = bond.wait_until("nothing else", 1, |_| true);
    assert!(!back.contains("type='error'"), "{back}");
    // tom: slave2 in slave3's old table, slave3 in the new one. slave2 sends the message
    // back to slave3 once; slave3, still on its old table, does not pass it on again: the
    // sender is told, and the two never bounce it between them.
    bond.send("<message to='tom@localhost' type='chat' id='b2'><body>ping-pong</body></message>");
    let got = bond.wait_for("id='b2'", 5);
    let got = got + &bond.wait_for("</message>", 5);
    assert!(got.contains("type='error'"), "{got}");
    assert!(got.contains("routing is changing"), "{got}");
    wait_node_log(&farm, "slave2", "for slave3's user: sent on", 1);
}
