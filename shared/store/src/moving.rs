//! A user's data leaves one slave's SQLite file for another's when a routing change gives the
//! user to another slave (issue 13; docs/rebalancing.md, "Data follows its user").
//!
//! [`SqliteStore::export_user`] reads every row the user has — account, roster, pending
//! subscription requests, offline messages, vCard, last activity — in one read transaction
//! and writes them as one `<user-data/>` element for the farm link;
//! [`SqliteStore::import_user`] writes them in one transaction on the new owner (or does
//! nothing when the account is already there: the first copy wins, a repeated one is a
//! no-op); [`SqliteStore::remove_users`] deletes them in one transaction on the old owner once
//! the new one has said it has them. So a node that dies anywhere in between leaves the rows
//! on at least one side, and the move is done again from the start.
//!
//! The tables and their columns are the list below, never names from the element: what a peer
//! sends can only fill these columns, with the value types SQLite stores.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use jabberfarm_proto::link::LINK_NS;
use jabberfarm_proto::xml::Element;

use crate::accounts::StoreError;
use crate::accounts::sqlite::SqliteStore;

/// One per-user table: its name, the columns that move (the first is always `username`;
/// autoincrement ids do not move, the order does), and the order to read rows in.
struct Table {
    name: &'static str,
    columns: &'static [&'static str],
    order: &'static str,
}

/// Every table that holds a user's rows, in insertion order (a roster item before its groups).
const TABLES: &[Table] = &[
    Table {
        name: "accounts",
        columns: &[
            "username",
            "salt",
            "iterations",
            "sha1_stored",
            "sha1_server",
            "sha256_stored",
            "sha256_server",
            "created_at",
        ],
        order: "username",
    },
    Table {
        name: "roster_versions",
        columns: &["username", "version"],
        order: "username",
    },
    Table {
        name: "roster_items",
        columns: &["username", "jid", "name", "subscription", "ask", "approved"],
        order: "jid",
    },
    Table {
        name: "roster_groups",
        columns: &["username", "jid", "position", "name"],
        order: "jid, position",
    },
    Table {
        name: "pending_in",
        columns: &["username", "contact", "stanza"],
        order: "id",
    },
    Table {
        name: "offline_messages",
        columns: &["username", "stanza", "stamp_ms"],
        order: "id",
    },
    Table {
        name: "vcards",
        columns: &["username", "xml"],
        order: "username",
    },
    Table {
        name: "last_activity",
        columns: &["username", "stamp_ms", "status"],
        order: "username",
    },
    Table {
        name: "known_users",
        columns: &["username", "first_login_ms"],
        order: "username",
    },
];

/// One statement that reads every row of a user (`?1`), in [`TABLES`] order and each
/// table's order: `(table index, JSON array of the columns after username)`, text tagged
/// `t`, bytes as `x` and hex, numbers and NULL as they are.
fn export_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let parts: Vec<String> = TABLES
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let cols: Vec<String> = t.columns[1..]
                    .iter()
                    .map(|c| {
                        format!(
                            "CASE typeof({c}) WHEN 'blob' THEN 'x' || hex({c}) \
                             WHEN 'text' THEN 't' || {c} ELSE {c} END"
                        )
                    })
                    .collect();
                format!(
                    "SELECT {i} AS t, row_number() OVER (ORDER BY {}) AS k, json_array({}) AS v \
                     FROM {} WHERE username = ?1",
                    t.order,
                    cols.join(", "),
                    t.name
                )
            })
            .collect();
        format!(
            "SELECT t, v FROM ({}) ORDER BY t, k",
            parts.join(" UNION ALL ")
        )
    })
}

/// The rows of one user's parts as JSON arrays per table (`[username, values…]`, tagged as
/// [`export_sql`] tags them), and how many; or the user and why its parts are refused.
#[allow(clippy::type_complexity)]
fn rows_of(parts: &[Element]) -> Result<(String, Vec<Vec<String>>, usize), (String, String)> {
    let user = parts.first().and_then(user_of).unwrap_or("?").to_owned();
    let refuse = |why: &str| (user.clone(), why.to_owned());
    for (i, p) in parts.iter().enumerate() {
        let whole = user_of(p) == Some(&*user)
            && p.attr("part") == Some(&*i.to_string())
            && p.attr("parts") == Some(&*parts.len().to_string());
        if !whole {
            return Err(refuse("the parts do not make one export"));
        }
    }
    let mut by_table: Vec<Vec<String>> = vec![Vec::new(); TABLES.len()];
    let mut n = 0;
    for el in parts.iter().flat_map(Element::children) {
        let name = el.attr("name").unwrap_or("");
        let t = TABLES
            .iter()
            .position(|t| el.is("table", LINK_NS) && t.name == name)
            .ok_or_else(|| refuse(&format!("no table {name:?} moves")))?;
        for row in el.children() {
            let values: Vec<&Element> = row.children().collect();
            if values.len() + 1 != TABLES[t].columns.len() {
                return Err(refuse(&format!("a {name} row of the wrong width")));
            }
            let mut json = vec![serde_json::Value::String(format!("t{user}"))];
            for v in values {
                json.push(Value::from_element(v).map_err(|e| refuse(&e))?.into_json());
            }
            by_table[t].push(serde_json::Value::Array(json).to_string());
            n += 1;
        }
    }
    if by_table[0].is_empty() {
        return Err(refuse("no account row"));
    }
    Ok((user, by_table, n))
}

/// One statement that writes the rows of table `t` given as one JSON array (`?1`) of rows,
/// each row an array of the columns tagged as [`export_sql`] tags them, in array order.
fn import_sql(t: &Table) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        TABLES
            .iter()
            .map(|t| {
                let values: Vec<String> = (0..t.columns.len())
                    .map(|i| {
                        let v = format!("json_extract(value, '$[{i}]')");
                        format!(
                            "CASE json_type(value, '$[{i}]') WHEN 'text' THEN \
                             CASE substr({v}, 1, 1) WHEN 'x' THEN unhex(substr({v}, 2)) \
                             ELSE substr({v}, 2) END ELSE {v} END"
                        )
                    })
                    .collect();
                format!(
                    "INSERT OR REPLACE INTO {} ({}) SELECT {} FROM json_each(?1) ORDER BY key",
                    t.name,
                    t.columns.join(", "),
                    values.join(", ")
                )
            })
            .collect()
    });
    let i = TABLES
        .iter()
        .position(|x| x.name == t.name)
        .unwrap_or_default();
    &all[i]
}

/// Users per `DELETE … IN (…)` (SQLite takes up to 32,766 parameters).
const REMOVE_BATCH: usize = 256;

/// What [`SqliteStore::import_user`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    /// The rows are written; this many.
    Written(usize),
    /// The account was here already (an earlier copy of the same move): nothing written.
    AlreadyHere,
}

/// One column's value, as SQLite stores it.
enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    fn to_element(&self) -> Element {
        match self {
            Value::Null => Element::new("n", LINK_NS),
            Value::Int(v) => Element::new("i", LINK_NS).with_text(v.to_string()),
            Value::Real(v) => Element::new("f", LINK_NS).with_text(v.to_string()),
            Value::Text(v) => Element::new("s", LINK_NS).with_text(B64.encode(v)),
            Value::Blob(v) => Element::new("b", LINK_NS).with_text(B64.encode(v)),
        }
    }

    fn from_element(el: &Element) -> Result<Value, String> {
        let text = el.text();
        let bad = || format!("<{}>{text}</{}> is not a value", el.name, el.name);
        Ok(match &*el.name {
            "n" => Value::Null,
            "i" => Value::Int(text.parse().map_err(|_| bad())?),
            "f" => Value::Real(text.parse().map_err(|_| bad())?),
            "s" => Value::Text(
                B64.decode(&text)
                    .ok()
                    .and_then(|t| String::from_utf8(t).ok())
                    .ok_or_else(bad)?,
            ),
            "b" => Value::Blob(B64.decode(&text).map_err(|_| bad())?),
            _ => return Err(bad()),
        })
    }

    /// The values of one row as [`export_sql`] writes them: a JSON array whose text values
    /// start with `t` and whose byte values are `x` and hex.
    fn from_json(json: &str) -> Result<Vec<Value>, String> {
        let row: Vec<serde_json::Value> =
            serde_json::from_str(json).map_err(|e| format!("a row is not JSON: {e}"))?;
        row.into_iter()
            .map(|v| match v {
                serde_json::Value::Null => Ok(Value::Null),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => Ok(Value::Int(i)),
                    None => n
                        .as_f64()
                        .map(Value::Real)
                        .ok_or("a number out of range".into()),
                },
                serde_json::Value::String(s) => match s.split_at_checked(1) {
                    Some(("t", text)) => Ok(Value::Text(text.to_owned())),
                    Some(("x", hex)) => hex::decode(hex)
                        .map(Value::Blob)
                        .map_err(|_| "bad hex".to_owned()),
                    _ => Err(format!("an untagged value {s:?}")),
                },
                other => Err(format!("an unexpected value {other}")),
            })
            .collect()
    }

    /// About what the value costs in a frame: its base64 and the tags around it.
    fn size(&self) -> usize {
        16 + match self {
            Value::Text(v) => v.len() * 4 / 3 + 4,
            Value::Blob(v) => v.len() * 4 / 3 + 4,
            _ => 24,
        }
    }

    /// The value as [`export_sql`] writes it: text tagged `t`, bytes as `x` and hex.
    fn into_json(self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Int(v) => v.into(),
            Value::Real(v) => v.into(),
            Value::Text(v) => format!("t{v}").into(),
            Value::Blob(v) => format!("x{}", hex::encode(v)).into(),
        }
    }
}

/// The user an element carries, if it is a `<user-data/>`.
pub fn user_of(el: &Element) -> Option<&str> {
    el.is("user-data", LINK_NS)
        .then(|| el.attr("user"))
        .flatten()
}

impl SqliteStore {
    /// Every row `user` has here, as `<user-data user part parts>` elements of at most about
    /// `budget` bytes each (a row bigger than that gets a part of its own); `None` when the
    /// user has no account here. One statement reads every table ([`export_sql`]), so the rows
    /// are one snapshot. Text and bytes travel as base64, so a part's size is known before it
    /// is written: a row of `n` bytes takes about `4n/3`, whatever characters it holds.
    pub async fn export_user(
        &self,
        user: &str,
        budget: usize,
    ) -> Result<Option<Vec<Element>>, StoreError> {
        let err = |e: sqlx::Error| self.db_error(&format!("exporting {user:?}"), e);
        let rows: Vec<(i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(export_sql()))
            .bind(user)
            .fetch_all(self.pool())
            .await
            .map_err(err)?;
        if rows.first().is_none_or(|(t, _)| *t != 0) {
            return Ok(None); // no account row
        }
        let mut parts: Vec<Vec<(&'static str, Element)>> = vec![Vec::new()];
        let mut used = 0;
        for (t, json) in rows {
            let table = usize::try_from(t)
                .ok()
                .and_then(|t| TABLES.get(t))
                .ok_or_else(|| self.refused(user, "a row of no table"))?;
            let values = Value::from_json(&json).map_err(|e| self.refused(user, &e))?;
            // The username is the element's: not repeated per row.
            let mut r = Element::new("row", LINK_NS);
            let mut size = 32;
            for v in values {
                size += v.size();
                r = r.with_child(v.to_element());
            }
            if used + size > budget && used > 0 {
                parts.push(Vec::new());
                used = 0;
            }
            used += size;
            if let Some(p) = parts.last_mut() {
                p.push((table.name, r));
            }
        }
        let n = parts.len();
        Ok(Some(
            parts
                .into_iter()
                .enumerate()
                .map(|(i, rows)| {
                    let mut part = Element::new("user-data", LINK_NS)
                        .with_attr("user", user)
                        .with_attr("part", i.to_string())
                        .with_attr("parts", n.to_string());
                    // Consecutive rows of one table share its element.
                    let mut table: Option<Element> = None;
                    for (name, row) in rows {
                        match table {
                            Some(ref mut t) if t.attr("name") == Some(name) => {
                                *t = std::mem::replace(t, Element::new("table", LINK_NS))
                                    .with_child(row);
                            }
                            _ => {
                                if let Some(t) = table.take() {
                                    part = part.with_child(t);
                                }
                                table = Some(
                                    Element::new("table", LINK_NS)
                                        .with_attr("name", name)
                                        .with_child(row),
                                );
                            }
                        }
                    }
                    if let Some(t) = table {
                        part = part.with_child(t);
                    }
                    part
                })
                .collect(),
        ))
    }

    /// Writes the rows of the parts [`Self::export_user`] made, all in one transaction,
    /// unless the account is here already. Parts that do not fit the tables, or do not make
    /// one whole export, are refused whole.
    pub async fn import_user(&self, parts: &[Element]) -> Result<Imported, StoreError> {
        let user = parts.first().and_then(user_of).unwrap_or("?").to_owned();
        let mut done = self.import_users(vec![parts.to_vec()]).await?;
        match done.pop() {
            Some((_, Ok(imported))) => Ok(imported),
            Some((_, Err(why))) => Err(self.refused(&user, &why)),
            None => Err(self.refused(&user, "nothing imported")),
        }
    }

    /// [`Self::import_user`] for many users in one transaction, one statement per table
    /// (the rows go in as one JSON array, [`import_sql`]): what happened to each user, by
    /// name. A user whose parts are refused is left out, the others are written.
    pub async fn import_users(
        &self,
        users: Vec<Vec<Element>>,
    ) -> Result<Vec<(String, Result<Imported, String>)>, StoreError> {
        let mut out = Vec::with_capacity(users.len());
        // Per table, the JSON rows of every user to write.
        let mut rows: Vec<Vec<String>> = vec![Vec::new(); TABLES.len()];
        let mut candidates: Vec<(String, Vec<Vec<String>>, usize)> = Vec::new();
        for parts in users {
            match rows_of(&parts) {
                Ok((user, by_table, n)) => candidates.push((user, by_table, n)),
                Err((user, why)) => out.push((user, Err(why))),
            }
        }
        let names: Vec<String> = candidates.iter().map(|(u, _, _)| u.clone()).collect();
        let err = |e: sqlx::Error| self.db_error(&format!("importing {} user(s)", names.len()), e);
        let mut tx = self.pool().begin().await.map_err(err)?;
        let mut here = std::collections::HashSet::new();
        for chunk in names.chunks(REMOVE_BATCH) {
            let sql = format!(
                "SELECT username FROM accounts WHERE username IN ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.as_str()));
            for u in chunk {
                q = q.bind(u);
            }
            here.extend(q.fetch_all(&mut *tx).await.map_err(err)?);
        }
        for (user, by_table, n) in candidates {
            if here.contains(&user) {
                out.push((user, Ok(Imported::AlreadyHere)));
                continue;
            }
            for (t, r) in by_table.into_iter().enumerate() {
                rows[t].extend(r);
            }
            here.insert(user.clone());
            out.push((user, Ok(Imported::Written(n))));
        }
        for (t, r) in TABLES.iter().zip(rows) {
            if r.is_empty() {
                continue;
            }
            let json = format!("[{}]", r.join(","));
            sqlx::query(sqlx::AssertSqlSafe(import_sql(t)))
                .bind(json)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        Ok(out)
    }

    /// Deletes every row of `users` in one transaction (their data lives on other nodes now).
    pub async fn remove_users(&self, users: &[String]) -> Result<(), StoreError> {
        let err = |e: sqlx::Error| self.db_error(&format!("removing {} user(s)", users.len()), e);
        let mut tx = self.pool().begin().await.map_err(err)?;
        for chunk in users.chunks(REMOVE_BATCH) {
            let marks = vec!["?"; chunk.len()].join(", ");
            for t in TABLES.iter().rev() {
                let sql = format!("DELETE FROM {} WHERE username IN ({marks})", t.name);
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
                for u in chunk {
                    q = q.bind(u);
                }
                q.execute(&mut *tx).await.map_err(err)?;
            }
        }
        tx.commit().await.map_err(err)
    }

    fn refused(&self, user: &str, why: &str) -> StoreError {
        StoreError::Unavailable {
            backend: "sqlite",
            detail: format!("the data of {user:?} cannot be imported: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use jabberfarm_proto::scram::ScramHash;
    use jid::BareJid;

    use super::*;
    use crate::AccountStore;
    use crate::im::{ImStore, OfflineStore, RosterItem, RosterStore, Stored, VcardStore};

    async fn open(dir: &tempfile::TempDir, name: &str) -> (AccountStore, ImStore) {
        let accounts = AccountStore::open_sqlite(&dir.path().join(format!("{name}.sqlite")))
            .await
            .unwrap();
        let im = ImStore::for_accounts(&accounts);
        (accounts, im)
    }

    /// Everything a user has moves, once: the old file's rows land in the new one, a second
    /// copy changes nothing, the old rows go; a forged element is refused whole.
    #[tokio::test]
    async fn a_user_moves_with_all_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let (old, old_im) = open(&dir, "old").await;
        let (new, new_im) = open(&dir, "new").await;
        old.add_user("juliet", "pw", 4096).await.unwrap();
        old.add_user("romeo", "pw", 4096).await.unwrap();
        let mut nurse = RosterItem::new(BareJid::new("nurse@example.net").unwrap());
        nurse.name = Some("Nurse & co".to_owned());
        nurse.groups = vec!["Verona".to_owned(), "House <C>".to_owned()];
        old_im.put_item("juliet", &nurse).await.unwrap();
        let paris = BareJid::new("paris@example.net").unwrap();
        old_im
            .add_pending_in("juliet", &paris, "<presence type='subscribe'/>", 10)
            .await
            .unwrap();
        for (stamp, body) in [(1, "first"), (2, " second\n")] {
            let msg = format!("<message><body>{body}</body></message>");
            assert_eq!(
                old_im.store("juliet", &msg, stamp, 10).await.unwrap(),
                Stored::Stored
            );
        }
        old_im
            .set_vcard("juliet", "<vCard xmlns='vcard-temp'><FN>J</FN></vCard>")
            .await
            .unwrap();
        let sqlite = |s: &AccountStore| s.sqlite().unwrap().clone();

        assert!(
            sqlite(&old)
                .export_user("tybalt", 1 << 20)
                .await
                .unwrap()
                .is_none()
        );
        // Small parts: about one row each, through the wire format as the link carries them.
        let data: Vec<Element> = sqlite(&old)
            .export_user("juliet", 100)
            .await
            .unwrap()
            .unwrap()
            .iter()
            .map(|p| jabberfarm_proto::xml::parse_element(&p.to_xml(), LINK_NS).unwrap())
            .collect();
        assert_eq!(data.len(), 9, "{data:#?}");
        assert_eq!(user_of(&data[8]), Some("juliet"));
        // Not all of them, or out of order: refused.
        assert!(sqlite(&new).import_user(&data[..8]).await.is_err());
        let mut shuffled = data.clone();
        shuffled.swap(0, 1);
        assert!(sqlite(&new).import_user(&shuffled).await.is_err());
        assert_eq!(
            sqlite(&new).import_user(&data).await.unwrap(),
            Imported::Written(9)
        );
        assert_eq!(
            sqlite(&new).import_user(&data).await.unwrap(),
            Imported::AlreadyHere
        );
        for hash in [ScramHash::Sha1, ScramHash::Sha256] {
            let keys = |c: Option<jabberfarm_proto::scram::ScramCredentials>| {
                c.map(|c| (c.salt, c.iterations, c.stored_key, c.server_key))
            };
            assert_eq!(
                keys(new.credentials("juliet", hash).await.unwrap()),
                keys(old.credentials("juliet", hash).await.unwrap())
            );
        }
        assert_eq!(
            new_im.roster("juliet").await.unwrap(),
            old_im.roster("juliet").await.unwrap()
        );
        let stanzas = |m: Vec<crate::im::OfflineMessage>| {
            m.into_iter()
                .map(|m| (m.stanza_xml, m.stamp_ms))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            stanzas(new_im.peek("juliet", 10).await.unwrap()),
            stanzas(old_im.peek("juliet", 10).await.unwrap())
        );
        assert_eq!(
            new_im.pending_in("juliet").await.unwrap(),
            old_im.pending_in("juliet").await.unwrap()
        );
        assert_eq!(
            new_im.vcard("juliet").await.unwrap(),
            old_im.vcard("juliet").await.unwrap()
        );

        sqlite(&old)
            .remove_users(&["juliet".to_owned()])
            .await
            .unwrap();
        assert!(
            sqlite(&old)
                .export_user("juliet", 1 << 20)
                .await
                .unwrap()
                .is_none()
        );
        assert!(old_im.roster("juliet").await.unwrap().1.is_empty());
        assert!(old_im.peek("juliet", 10).await.unwrap().is_empty());
        assert!(
            old.credentials("romeo", ScramHash::Sha256)
                .await
                .unwrap()
                .is_some()
        );

        // Only the known tables and columns: a forged table or row is refused, nothing written.
        let romeo = sqlite(&old)
            .export_user("romeo", 1 << 20)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(romeo.len(), 1);
        let romeo = romeo[0].clone();
        let forged = romeo
            .clone()
            .with_child(Element::new("table", LINK_NS).with_attr("name", "sqlite_master"));
        assert!(sqlite(&new).import_user(&[forged]).await.is_err());
        let wide = romeo.clone().with_child(
            Element::new("table", LINK_NS)
                .with_attr("name", "vcards")
                .with_child(
                    Element::new("row", LINK_NS)
                        .with_child(Element::new("s", LINK_NS))
                        .with_child(Element::new("s", LINK_NS)),
                ),
        );
        assert!(sqlite(&new).import_user(&[wide]).await.is_err());
        assert!(
            new.credentials("romeo", ScramHash::Sha256)
                .await
                .unwrap()
                .is_none()
        );
        old.close().await;
        new.close().await;
    }
}
