//! Profanity (Debian, the terminal client), driven in tmux: it follows `<see-other-host/>`, so
//! through the master it must end up connected to the slave that owns its user, with
//! `redirect = "auto"` (the default) as with `"always"`, and log in there again the next time
//! (the master never relays a client that follows its redirects).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::TestFarm;

/// One profanity in its own tmux server and its own HOME (its accounts file and logs).
struct Profanity {
    socket: String,
    home: tempfile::TempDir,
    account: String,
}

impl Profanity {
    fn start(account: &str, master: std::net::SocketAddr, password: &str) -> Profanity {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(".local/share/profanity");
        std::fs::create_dir_all(&dir).unwrap();
        // tls.policy=trust: the demo CA is not the system's; the name is not what is tested.
        std::fs::write(
            dir.join("accounts"),
            format!(
                "[{account}]\nenabled=true\njid={account}@localhost\nserver={}\nport={}\n\
                 password={password}\ntls.policy=trust\nresource=profanity\n",
                master.ip(),
                master.port()
            ),
        )
        .unwrap();
        let socket = format!("jabberfarm-test-{}-{account}", std::process::id());
        let status = Command::new("tmux")
            .args(["-L", &socket, "new-session", "-d", "-x", "200", "-y", "50"])
            .arg(format!(
                "env HOME={} profanity -l DEBUG -a {account}",
                home.path().display()
            ))
            .status()
            .expect("tmux (Debian package tmux) is needed for the profanity test");
        assert!(status.success(), "tmux did not start profanity");
        Profanity {
            socket,
            home,
            account: account.to_owned(),
        }
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log(&self) -> String {
        let p = self
            .home
            .path()
            .join(".local/share/profanity/logs/profanity.log");
        std::fs::read_to_string(p).unwrap_or_default()
    }

    /// The remote port of profanity's established connection, once it is logged in.
    fn logged_in_port(&self, secs: u64) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let me = format!("-a {}", self.account);
        loop {
            let logged_in = self.log().contains(&format!(
                "{}@localhost logged in successfully",
                self.account
            ));
            // The shell tmux started matches too; only profanity has the connection.
            let pids: Vec<String> = Command::new("pgrep")
                .args(["-f", &format!("profanity -l DEBUG {me}$")])
                .output()
                .ok()
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.lines().map(str::to_owned).collect())
                .unwrap_or_default();
            if logged_in {
                let ss = Command::new("ss").args(["-tnpH"]).output().unwrap();
                let ss = String::from_utf8_lossy(&ss.stdout);
                let line = ss.lines().find(|l| {
                    l.starts_with("ESTAB") && pids.iter().any(|p| l.contains(&format!("pid={p},")))
                });
                if let Some(l) = line {
                    let peer = l.split_whitespace().nth(4).unwrap();
                    return peer.rsplit(':').next().unwrap().parse().unwrap();
                }
            }
            assert!(
                Instant::now() < deadline,
                "profanity did not log in:\n{}\nits log:\n{}",
                self.screen(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn quit(self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "/quit", "Enter"])
            .status();
        std::thread::sleep(Duration::from_millis(300));
    }
}

impl Drop for Profanity {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

#[test]
fn profanity_follows_the_redirect_to_its_slave_in_auto_and_always() {
    for mode in ["auto", "always"] {
        let farm = TestFarm::start_edited(2, |t| format!("{t}\n[relay]\nredirect = \"{mode}\"\n"));
        let users = farm.users_on_every_slave("prof", 1);
        for (user, _) in &users {
            farm.add_user(&format!("{user}@localhost"), "secret");
        }
        for (user, _) in &users {
            let owner = farm.owner(user).c2s.port();
            // Twice: the second login, too, is redirected, not relayed.
            for round in 0..2 {
                let p = Profanity::start(user, farm.master.c2s, "secret");
                let port = p.logged_in_port(20);
                assert_eq!(
                    port,
                    owner,
                    "{mode}, login {round}: {user} is connected to port {port}, its slave is on \
                     {owner} (master {})\n{}",
                    farm.master.c2s,
                    p.log()
                );
                p.quit();
                if mode == "auto" {
                    farm.wait_log(&format!("user=\"{user}\" relayed=false"), 10);
                }
            }
        }
        let log = farm.log();
        assert!(log.contains("redirecting login"), "{mode}:\n{log}");
        assert!(!log.contains("relaying login"), "{mode}: relayed\n{log}");
    }
}
