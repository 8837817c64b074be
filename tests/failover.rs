//! Issue 15: failover with central data. On a MariaDB-backed farm of three slaves, the owner
//! of a user is killed with -9: once it is marked failed (its port refuses connections) the
//! master sends the user's login to the next slave of its ranking, which serves it — messages
//! both ways reach it there — and when the owner is back, the user is moved back to it
//! (`<see-other-host/>` naming the owner), as a routing change would move it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use common::{Raw, TestFarm, plain_auth};
use jabberfarm_testkit::servers;

/// The `HOST:PORT` of a `<see-other-host/>` in `text`.
fn redirect_of(text: &str) -> String {
    let start = text.find("<see-other-host").unwrap();
    let from = start + text[start..].find('>').unwrap() + 1;
    let to = from + text[from..].find('<').unwrap();
    text[from..to].to_owned()
}

#[test]
fn a_failed_slave_s_users_are_served_by_the_next_and_move_back_when_it_returns() {
    let db = servers::shared_mariadb();
    let url = db.create_database("failover");
    let storage = format!(
        "[storage]\nbackend = \"mysql\"\n[storage.mysql]\nurl = \"{url}\"\nmax_connections = 4\n\n"
    );
    let mut farm = TestFarm::start_processes_edited(3, |t| {
        t.replacen("[storage]\nscram_iterations = 4096\n\n", &storage, 1)
    });
    let (x, c) = farm.user_pair("fail", "pw");
    let owner = farm.owner(&x).name.clone();
    let owner_c2s = farm.owner(&x).c2s;
    let mut cc = Raw::login(farm.owner(&c).c2s, &c, "pw", "r");
    cc.send("<presence/>");

    farm.kill_node(&owner);
    farm.wait_log(&format!("{owner} is lost (its farm port refuses"), 10);
    // The master marks it failed from its own link (it probes the port every second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let to = loop {
        let mut m = Raw::connect(farm.master.c2s);
        m.open();
        m.send(&plain_auth(&x, "pw"));
        let got = m.wait_closed(5);
        if got.contains("see-other-host") {
            break redirect_of(&got);
        }
        assert!(
            got.contains("remote-connection-failed") && std::time::Instant::now() < deadline,
            "{got}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let to: SocketAddr = to.parse().unwrap();
    assert_ne!(to, owner_c2s, "sent to the failed owner");
    assert!(
        farm.slaves.iter().any(|s| s.c2s == to),
        "{to} is not a slave"
    );

    // The next slave takes the login and serves the user: messages both ways.
    let mut cx = Raw::login(to, &x, "pw", "r");
    cx.send("<presence/>");
    cx.sync("localhost");
    cc.send(&format!(
        "<message to='{x}@localhost' type='chat'><body>to-the-fallback</body></message>"
    ));
    cx.wait_for("to-the-fallback", 10);
    cx.send(&format!(
        "<message to='{c}@localhost' type='chat'><body>from-the-fallback</body></message>"
    ));
    cc.wait_for("from-the-fallback", 10);

    // The owner is back: the user is sent home.
    farm.start_node(&owner);
    let moved = cx.wait_for("see-other-host", 20);
    let moved = moved + &cx.wait_for("</see-other-host>", 5);
    assert_eq!(redirect_of(&moved), owner_c2s.to_string(), "{moved}");
    let mut home = Raw::login(owner_c2s, &x, "pw", "r");
    home.send("<presence/>");
    home.sync("localhost");
    cc.send(&format!(
        "<message to='{x}@localhost' type='chat'><body>home-again</body></message>"
    ));
    home.wait_for("home-again", 10);
}
