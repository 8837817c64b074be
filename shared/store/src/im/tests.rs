//! The store contract, one body per behaviour, run through [`ImStore`] against every backend:
//! a real SQLite file, and a real MariaDB (a throwaway server from `tests/servers/`, one per
//! test binary, a new database per test).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use jid::BareJid;

use crate::accounts::{AccountStore, StoreError};
use jabberfarm_config::{MysqlAccounts, MysqlConfig, StorageBackend, StorageConfig};

use super::*;

use jabberfarm_testkit::servers;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Mysql,
}

/// Where one test's data lives; [`Place::open`] again is a restart.
enum Place {
    Sqlite(tempfile::TempDir),
    Mysql(Arc<servers::MariaDb>, String),
}

impl Place {
    fn new(backend: Backend) -> Place {
        match backend {
            Backend::Sqlite => Place::Sqlite(tempfile::tempdir().unwrap()),
            Backend::Mysql => {
                let server = servers::shared_mariadb();
                let url = server.create_database("store");
                Place::Mysql(server, url)
            }
        }
    }

    async fn open(&self) -> (AccountStore, ImStore) {
        let accounts = match self {
            Place::Sqlite(dir) => AccountStore::open_sqlite(&self.sqlite_path(dir))
                .await
                .unwrap(),
            Place::Mysql(_, url) => {
                let storage = StorageConfig {
                    backend: StorageBackend::Mysql(MysqlConfig {
                        url: url.clone(),
                        password: None,
                        max_connections: 8,
                        acquire_timeout: Duration::from_secs(5),
                        query_timeout: Duration::from_secs(20),
                        migrate: true,
                        accounts: MysqlAccounts::Scram,
                    }),
                    scram_iterations: 4096,
                };
                AccountStore::open(&storage, std::path::Path::new("unused"), "slave1")
                    .await
                    .unwrap()
            }
        };
        let im = ImStore::for_accounts(&accounts);
        (accounts, im)
    }

    fn sqlite_path(&self, dir: &tempfile::TempDir) -> std::path::PathBuf {
        dir.path().join("data").join("node.sqlite")
    }
}

/// `#[tokio::test]`s `sqlite::NAME` and `mysql::NAME` for each body `NAME(Backend)`.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await
                }
            )*
        }
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Mysql).await
                }
            )*
        }
    };
}

on_every_backend!(
    roster_put_get_update_remove_with_versions,
    groups_with_commas_unicode_order_and_duplicates,
    pending_in_add_replace_remove_order,
    offline_order_quota_delete_up_to,
    concurrent_writes_are_atomic_and_futures_are_send,
    vcard_set_get_replace,
    last_logout_set_replace,
    users_never_mix_survive_restart_and_delete_user,
    closed_database_is_unavailable,
    known_users_and_what_each_keeps,
    held_in_order_bounded_per_node_and_user_and_apart_per_holder,
);

async fn held_in_order_bounded_per_node_and_user_and_apart_per_holder(backend: Backend) {
    let place = Place::new(backend);
    let (accounts, im) = place.open().await;
    let limits = HoldLimits {
        per_node: 4,
        per_user: 3,
    };
    let msg = |n: i64| format!("<message to='juliet@localhost' id='h{n}'/>");
    let hold = |holder: &'static str, user: &'static str, n: i64| {
        let im = im.clone();
        async move {
            im.hold(holder, "slave2", user, &msg(n), n, limits)
                .await
                .unwrap()
        }
    };
    assert!(im.held_for("slave1").await.unwrap().is_empty());
    for n in 1..=3 {
        assert_eq!(hold("slave1", "juliet", n).await, Held::Held);
    }
    // Juliet's bound; Romeo still fits, then the node's bound.
    assert_eq!(hold("slave1", "juliet", 4).await, Held::Full);
    assert_eq!(hold("slave1", "romeo", 5).await, Held::Held);
    assert_eq!(hold("slave1", "romeo", 6).await, Held::Full);
    // Another holder's rows are its own (a central database shared by the slaves).
    assert_eq!(hold("slave3", "juliet", 7).await, Held::Held);
    assert_eq!(im.held_for("slave1").await.unwrap(), ["slave2"]);

    let all = im.held("slave1", "slave2", 0, 10).await.unwrap();
    let xml: Vec<_> = all.iter().map(|m| m.stanza_xml.clone()).collect();
    assert_eq!(xml, [msg(1), msg(2), msg(3), msg(5)]);
    assert_eq!(im.held("slave1", "slave2", 0, 2).await.unwrap(), all[..2]);
    // Read on from the last row read (written, not yet released).
    assert_eq!(
        im.held("slave1", "slave2", all[1].id, 10).await.unwrap(),
        all[2..]
    );
    assert_eq!(
        im.release_up_to("slave1", "slave2", all[1].id)
            .await
            .unwrap(),
        2
    );
    let rest = im.held("slave1", "slave2", 0, 10).await.unwrap();
    assert_eq!(rest, all[2..]);
    assert_eq!(
        im.release_up_to("slave1", "slave2", all[3].id)
            .await
            .unwrap(),
        2
    );
    assert!(im.held_for("slave1").await.unwrap().is_empty());
    assert_eq!(im.held("slave3", "slave2", 0, 10).await.unwrap().len(), 1);
    accounts.close().await;
}

fn item(jid: &str, name: Option<&str>, sub: Subscription, groups: &[&str]) -> RosterItem {
    RosterItem {
        jid: self::jid(jid),
        name: name.map(str::to_owned),
        subscription: sub,
        ask: false,
        approved: false,
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    }
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

async fn roster_put_get_update_remove_with_versions(backend: Backend) {
    let place = Place::new(backend);
    let (accounts, im) = place.open().await;

    assert_eq!(im.roster("juliet").await.unwrap(), (0, vec![]));
    assert_eq!(im.version("juliet").await.unwrap(), 0);
    assert_eq!(
        im.item("juliet", &jid("romeo@example.net")).await.unwrap(),
        None
    );

    let romeo = item("romeo@example.net", Some("Romeo"), Subscription::None, &[]);
    let nurse = item("nurse@example.com", None, Subscription::Both, &["Servants"]);
    assert_eq!(im.put_item("juliet", &romeo).await.unwrap(), 1);
    assert_eq!(im.put_item("juliet", &nurse).await.unwrap(), 2);
    assert_eq!(im.version("juliet").await.unwrap(), 2);
    assert_eq!(im.item_count("juliet").await.unwrap(), 2);
    assert_eq!(im.item_count("romeo").await.unwrap(), 0);
    // Sorted by JID, not by insertion.
    assert_eq!(
        im.roster("juliet").await.unwrap(),
        (2, vec![nurse.clone(), romeo.clone()])
    );

    // Update: every field replaced, including groups and flags.
    let romeo2 = RosterItem {
        name: None,
        subscription: Subscription::To,
        ask: true,
        approved: true,
        groups: vec!["Friends".into(), "Verona".into()],
        ..romeo.clone()
    };
    assert_eq!(im.put_item("juliet", &romeo2).await.unwrap(), 3);
    assert_eq!(
        im.item("juliet", &jid("romeo@example.net")).await.unwrap(),
        Some(romeo2.clone())
    );
    let romeo3 = RosterItem {
        groups: vec!["Verona".into()],
        ask: false,
        ..romeo2.clone()
    };
    assert_eq!(im.put_item("juliet", &romeo3).await.unwrap(), 4);
    assert_eq!(
        im.roster("juliet").await.unwrap(),
        (4, vec![nurse.clone(), romeo3.clone()])
    );

    // Removing an absent item changes nothing, not even the version.
    assert_eq!(
        im.remove_item("juliet", &jid("tybalt@example.net"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(im.version("juliet").await.unwrap(), 4);
    assert_eq!(
        im.remove_item("juliet", &jid("romeo@example.net"))
            .await
            .unwrap(),
        Some(5)
    );
    assert_eq!(
        im.item("juliet", &jid("romeo@example.net")).await.unwrap(),
        None
    );
    assert_eq!(
        im.remove_item("juliet", &jid("romeo@example.net"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(im.roster("juliet").await.unwrap(), (5, vec![nurse.clone()]));
    // Adding it back starts with no stale groups.
    assert_eq!(im.put_item("juliet", &romeo).await.unwrap(), 6);
    assert_eq!(
        im.item("juliet", &jid("romeo@example.net")).await.unwrap(),
        Some(romeo)
    );
    accounts.close().await;
}

async fn groups_with_commas_unicode_order_and_duplicates(backend: Backend) {
    let place = Place::new(backend);
    let (accounts, im) = place.open().await;
    let groups = [
        "Montague, House of",
        "日本語 グループ",
        "a,b,,c",
        "\"quoted\" & <angled>",
        "  spaced  ",
        "Émigrés 🚀",
        "",
    ];
    let it = item(
        "romeo@example.net",
        Some("Ромео, 🌹"),
        Subscription::From,
        &groups,
    );
    im.put_item("juliet", &it).await.unwrap();
    assert_eq!(im.item("juliet", &it.jid).await.unwrap(), Some(it.clone()));
    assert_eq!(im.roster("juliet").await.unwrap().1, vec![it.clone()]);

    // A repeated group is kept once, at its first place; the order given is kept.
    let dup = item(
        "romeo@example.net",
        None,
        Subscription::From,
        &["b", "a, b", "b", "a", "a, b"],
    );
    im.put_item("juliet", &dup).await.unwrap();
    assert_eq!(
        im.item("juliet", &dup.jid).await.unwrap().unwrap().groups,
        ["b", "a, b", "a"]
    );
    accounts.close().await;
}

async fn pending_in_add_replace_remove_order(backend: Backend) {
    let place = Place::new(backend);
    let (accounts, im) = place.open().await;
    let sub = |from: &str, n: u32| format!("<presence from='{from}' type='subscribe' id='{n}'/>");
    // Juliet's request from `from`, the n-th sent; false when `max` others already wait.
    let add = async |from: &str, n: u32, max: usize| {
        im.add_pending_in("juliet", &jid(from), &sub(from, n), max)
            .await
            .unwrap()
    };
    let remove =
        async |user: &str, from: &str| im.remove_pending_in(user, &jid(from)).await.unwrap();
    let pending = async |expected: &[(&str, u32)]| {
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|&(from, n)| (from.to_owned(), sub(from, n)))
            .collect();
        assert_eq!(im.pending_in("juliet").await.unwrap(), expected);
    };
    pending(&[]).await;

    assert!(add("romeo@example.net", 1, 10).await);
    assert!(add("paris@example.net", 2, 10).await);
    assert!(add("benvolio@example.net", 3, 10).await);
    pending(&[
        ("romeo@example.net", 1),
        ("paris@example.net", 2),
        ("benvolio@example.net", 3),
    ])
    .await;

    // A repeated request replaces the old one and becomes the newest.
    assert!(add("romeo@example.net", 4, 10).await);
    pending(&[
        ("paris@example.net", 2),
        ("benvolio@example.net", 3),
        ("romeo@example.net", 4),
    ])
    .await;

    assert!(remove("juliet", "paris@example.net").await);
    assert!(!remove("juliet", "paris@example.net").await);
    assert!(!remove("romeo", "benvolio@example.net").await);
    pending(&[("benvolio@example.net", 3), ("romeo@example.net", 4)]).await;
    // At most `max` requests from other contacts; a repeated one still replaces its own.
    assert!(!add("tybalt@example.net", 5, 2).await);
    assert!(add("romeo@example.net", 6, 2).await);
    pending(&[("benvolio@example.net", 3), ("romeo@example.net", 6)]).await;
    // Pending requests are not roster items and do not bump the version.
    assert_eq!(im.roster("juliet").await.unwrap(), (0, vec![]));
    accounts.close().await;
}

async fn offline_order_quota_delete_up_to(backend: Backend) {
    let place = Place::new(backend);
    let (accounts, im) = place.open().await;
    let msg =
        |n: i64| format!("<message to='juliet@localhost' id='m{n}'><body>{n}</body></message>");

    assert_eq!(im.count("juliet").await.unwrap(), 0);
    assert!(im.peek("juliet", 10).await.unwrap().is_empty());
    for n in 1..=3 {
        assert_eq!(
            im.store("juliet", &msg(n), 1000 + n, 3).await.unwrap(),
            Stored::Stored
        );
    }
    // Full: nothing stored, the others untouched.
    assert_eq!(
        im.store("juliet", &msg(4), 1004, 3).await.unwrap(),
        Stored::QuotaFull
    );
    assert_eq!(im.count("juliet").await.unwrap(), 3);
    assert_eq!(
        im.store("juliet", &msg(4), 1004, 0).await.unwrap(),
        Stored::QuotaFull
    );

    let all = im.peek("juliet", 100).await.unwrap();
    let bodies: Vec<_> = all.iter().map(|m| m.stanza_xml.clone()).collect();
    assert_eq!(bodies, [msg(1), msg(2), msg(3)]);
    assert_eq!(
        all.iter().map(|m| m.stamp_ms).collect::<Vec<_>>(),
        [1001, 1002, 1003]
    );
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    // Peek does not delete, and honours the limit.
    assert_eq!(im.peek("juliet", 2).await.unwrap(), all[..2]);
    assert_eq!(im.count("juliet").await.unwrap(), 3);

    assert_eq!(im.delete_up_to("juliet", all[1].id).await.unwrap(), 2);
    assert_eq!(im.peek("juliet", 100).await.unwrap(), all[2..]);
    assert_eq!(im.delete_up_to("juliet", all[1].id).await.unwrap(), 0);
    // Room again below the quota.
    assert_eq!(
        im.store("juliet", &msg(5), 1005, 3).await.unwrap(),
        Stored::Stored
    );
    assert_eq!(im.delete_up_to("juliet", i64::MAX).await.unwrap(), 2);
    assert_eq!(im.count("juliet").await.unwrap(), 0);
    // Ids never go back, even with the table empty.
    assert_eq!(
        im.store("juliet", &msg(6), 1006, 3).await.unwrap(),
        Stored::Stored
    );
    let last = im.peek("juliet", 1).await.unwrap();
    assert!(last[0].id > all[2].id, "{last:?} after {all:?}");
    accounts.close().await;
}

async fn concurrent_writes_are_atomic_and_futures_are_send(backend: Backend) {
    let place = Place::new(backend);
    let (accounts, im) = place.open().await;
    let mut tasks = Vec::new();
    for n in 0..40 {
        let im = im.clone();
        tasks.push(tokio::spawn(async move {
            let stored = im
                .store("juliet", &format!("<message id='{n}'/>"), n, 25)
                .await
                .unwrap();
            let version = im
                .put_item(
                    "juliet",
                    &RosterItem::new(jid(&format!("c{n:02}@example.net"))),
                )
                .await
                .unwrap();
            (stored, version)
        }));
    }
    let mut versions = Vec::new();
    let mut stored = 0;
    for task in tasks {
        let (s, v) = task.await.unwrap();
        stored += usize::from(s == Stored::Stored);
        versions.push(v);
    }
    assert_eq!(stored, 25);
    assert_eq!(im.count("juliet").await.unwrap(), 25);
    versions.sort_unstable();
    assert_eq!(versions, (1..=40).collect::<Vec<u64>>());
    let (version, items) = im.roster("juliet").await.unwrap();
    assert_eq!((version, items.len()), (40, 40));
    accounts.close().await;
}

async fn vcard_set_get_replace(backend: Backend) {
    let place = Place::new(backend);
    let (accounts, im) = place.open().await;
    assert_eq!(im.vcard("juliet").await.unwrap(), None);
    let v1 = "<vCard xmlns='vcard-temp'><FN>Juliet Capulet</FN></vCard>";
    let v2 = "<vCard xmlns='vcard-temp'><FN>Джульетта 🌹</FN><NICKNAME>J, C</NICKNAME></vCard>";
    im.set_vcard("juliet", v1).await.unwrap();
    assert_eq!(im.vcard("juliet").await.unwrap().as_deref(), Some(v1));
    im.set_vcard("juliet", v2).await.unwrap();
    assert_eq!(im.vcard("juliet").await.unwrap().as_deref(), Some(v2));
    assert_eq!(im.vcard("romeo").await.unwrap(), None);
    accounts.close().await;
}

async fn last_logout_set_replace(backend: Backend) {
    let place = Place::new(backend);
    let (accounts, im) = place.open().await;
    assert_eq!(im.last_logout("juliet").await.unwrap(), None);
    let first = LastLogout {
        stamp_ms: 1_031_699_305_000,
        status: "Heading home".to_owned(),
    };
    let second = LastLogout {
        stamp_ms: 1_795_000_000_123,
        status: "Ушла 🌙, back at 9".to_owned(),
    };
    im.set_last_logout("juliet", &first).await.unwrap();
    assert_eq!(im.last_logout("juliet").await.unwrap(), Some(first));
    im.set_last_logout("juliet", &second).await.unwrap();
    assert_eq!(
        im.last_logout("juliet").await.unwrap(),
        Some(second.clone())
    );
    assert_eq!(im.last_logout("romeo").await.unwrap(), None);
    accounts.close().await;
    // Kept across a restart.
    let (accounts, im) = place.open().await;
    assert_eq!(im.last_logout("juliet").await.unwrap(), Some(second));
    accounts.close().await;
}

/// Fills every table for `user`, each value naming the user.
async fn fill(im: &ImStore, user: &str) {
    let contact = format!("friend-of-{user}@example.net");
    im.put_item(
        user,
        &item(&contact, Some(user), Subscription::Both, &[user, "shared"]),
    )
    .await
    .unwrap();
    im.add_pending_in(
        user,
        &jid("stranger@example.net"),
        &format!("<presence to='{user}'/>"),
        10,
    )
    .await
    .unwrap();
    for n in 0..2 {
        let stored = im
            .store(user, &format!("<message to='{user}' n='{n}'/>"), n, 10)
            .await
            .unwrap();
        assert_eq!(stored, Stored::Stored);
    }
    im.set_vcard(
        user,
        &format!("<vCard xmlns='vcard-temp'><FN>{user}</FN></vCard>"),
    )
    .await
    .unwrap();
    im.set_last_logout(
        user,
        &LastLogout {
            stamp_ms: 7,
            status: user.to_owned(),
        },
    )
    .await
    .unwrap();
}

/// Asserts that `user` has exactly what [`fill`] gave them, nothing of anybody else.
async fn check_filled(im: &ImStore, user: &str) {
    let contact = format!("friend-of-{user}@example.net");
    assert_eq!(
        im.roster(user).await.unwrap(),
        (
            1,
            vec![item(
                &contact,
                Some(user),
                Subscription::Both,
                &[user, "shared"]
            )]
        )
    );
    assert_eq!(
        im.pending_in(user).await.unwrap(),
        owned(&[("stranger@example.net", &format!("<presence to='{user}'/>"))])
    );
    let msgs = im.peek(user, 10).await.unwrap();
    let xml: Vec<_> = msgs.iter().map(|m| m.stanza_xml.as_str()).collect();
    assert_eq!(
        xml,
        [
            format!("<message to='{user}' n='0'/>"),
            format!("<message to='{user}' n='1'/>")
        ]
    );
    assert_eq!(
        im.vcard(user).await.unwrap(),
        Some(format!("<vCard xmlns='vcard-temp'><FN>{user}</FN></vCard>"))
    );
    assert_eq!(
        im.last_logout(user).await.unwrap(),
        Some(LastLogout {
            stamp_ms: 7,
            status: user.to_owned()
        })
    );
}

async fn users_never_mix_survive_restart_and_delete_user(backend: Backend) {
    let place = Place::new(backend);
    let (accounts, im) = place.open().await;
    fill(&im, "juliet").await;
    fill(&im, "romeo").await;
    check_filled(&im, "juliet").await;
    check_filled(&im, "romeo").await;
    // Operations on one user never reach the other.
    assert_eq!(im.delete_up_to("tybalt", i64::MAX).await.unwrap(), 0);
    assert!(
        !im.remove_pending_in("tybalt", &jid("stranger@example.net"))
            .await
            .unwrap()
    );
    // The quota counts the user's own messages only.
    assert_eq!(
        im.store("tybalt", "<message/>", 0, 1).await.unwrap(),
        Stored::Stored
    );
    assert_eq!(im.delete_up_to("tybalt", i64::MAX).await.unwrap(), 1);
    assert_eq!(
        im.remove_item("juliet", &jid("friend-of-romeo@example.net"))
            .await
            .unwrap(),
        None
    );
    check_filled(&im, "romeo").await;
    accounts.close().await;

    // Restart: everything is still there.
    let (accounts, im) = place.open().await;
    check_filled(&im, "juliet").await;
    check_filled(&im, "romeo").await;

    im.delete_user("juliet").await.unwrap();
    assert!(im.roster("juliet").await.unwrap().1.is_empty());
    assert!(im.pending_in("juliet").await.unwrap().is_empty());
    assert_eq!(im.count("juliet").await.unwrap(), 0);
    assert_eq!(im.vcard("juliet").await.unwrap(), None);
    assert_eq!(im.last_logout("juliet").await.unwrap(), None);
    // Deleting again is fine; the other user is untouched.
    im.delete_user("juliet").await.unwrap();
    check_filled(&im, "romeo").await;
    accounts.close().await;

    // Still gone after a restart; a new account of the same name never reuses a roster
    // version a client may have cached for the old one.
    let (accounts, im) = place.open().await;
    assert_eq!(im.count("juliet").await.unwrap(), 0);
    assert!(im.roster("juliet").await.unwrap().1.is_empty());
    assert_eq!(
        im.put_item("juliet", &RosterItem::new(jid("nurse@example.com")))
            .await
            .unwrap(),
        2
    );
    check_filled(&im, "romeo").await;
    accounts.close().await;
}

async fn closed_database_is_unavailable(backend: Backend) {
    let place = Place::new(backend);
    let (accounts, im) = place.open().await;
    accounts.close().await;
    let err = im.roster("juliet").await.unwrap_err();
    let text = err.to_string();
    let StoreError::Unavailable { backend: name, .. } = err else {
        panic!("{err:?}");
    };
    assert_eq!(name, accounts.backend_name());
    assert!(text.contains("reading the roster of \"juliet\""), "{text}");
    // The message names the file or the server.
    let where_ = match &place {
        Place::Sqlite(dir) => place.sqlite_path(dir).display().to_string(),
        Place::Mysql(server, _) => format!("127.0.0.1:{}/jf_store_", server.port),
    };
    assert!(text.contains(&where_), "{text}");
    let err = im.store("juliet", "<message/>", 0, 10).await.unwrap_err();
    assert!(
        err.to_string().contains("storing an offline message"),
        "{err}"
    );
}

/// A contact's bare JID, as the roster store takes it.
fn jid(s: &str) -> BareJid {
    BareJid::new(s).unwrap()
}

/// What `jabberfarm plan` counts: who has logged in, and (data on the slaves) what each user
/// keeps — counted, not estimated.
async fn known_users_and_what_each_keeps(backend: Backend) {
    let place = Place::new(backend);
    let (accounts, im) = place.open().await;
    assert!(im.known_users().await.unwrap().is_empty());
    im.mark_known("romeo", 1).await.unwrap();
    im.mark_known("juliet", 2).await.unwrap();
    im.mark_known("romeo", 3).await.unwrap();
    assert_eq!(im.known_users().await.unwrap(), ["juliet", "romeo"]);

    im.put_item("juliet", &RosterItem::new(jid("romeo@example.net")))
        .await
        .unwrap();
    im.put_item("juliet", &RosterItem::new(jid("nurse@example.net")))
        .await
        .unwrap();
    im.add_pending_in(
        "juliet",
        &jid("paris@example.net"),
        "<presence type='subscribe'/>",
        10,
    )
    .await
    .unwrap();
    let msg = "<message><body>hi</body></message>";
    for stamp in [1, 2, 3] {
        assert_eq!(
            im.store("romeo", msg, stamp, 10).await.unwrap(),
            Stored::Stored
        );
    }
    im.set_vcard("romeo", "<vCard xmlns='vcard-temp'/>")
        .await
        .unwrap();
    match im.holdings().await.unwrap() {
        None => assert_eq!(backend, Backend::Mysql, "central data is not copied"),
        Some(all) => {
            assert_eq!(backend, Backend::Sqlite);
            assert_eq!(all.len(), 2, "{all:?}");
            let juliet = all["juliet"];
            assert_eq!(
                (
                    juliet.roster_items,
                    juliet.pending_in,
                    juliet.offline_messages,
                    juliet.vcard
                ),
                (2, 1, 0, false)
            );
            let text = "romeo@example.netnurse@example.net<presence type='subscribe'/>";
            assert_eq!(juliet.bytes, text.len() as u64);
            let romeo = all["romeo"];
            assert_eq!(
                (romeo.roster_items, romeo.offline_messages, romeo.vcard),
                (0, 3, true)
            );
            assert_eq!(
                romeo.bytes,
                (3 * msg.len() + "<vCard xmlns='vcard-temp'/>".len()) as u64
            );
        }
    }
    accounts.close().await;
}
