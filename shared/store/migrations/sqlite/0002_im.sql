-- Per-user IM data of a slave (shared/store/src/im/): roster, pending inbound subscription requests,
-- offline messages, vCards. Keyed by the normalised localpart; deliberately no foreign key to
-- `accounts`, so the same tables serve users whose accounts live elsewhere (LDAP).
-- Text compares with the BINARY collation: byte order of the UTF-8, the same as Rust's `str`.

-- RFC 6121 §2.6: one version counter per user, bumped by every roster change.
CREATE TABLE roster_versions (
    username TEXT    PRIMARY KEY NOT NULL,
    version  INTEGER NOT NULL
) WITHOUT ROWID;

-- RFC 6121 §2.1: one row per contact (bare JID).
CREATE TABLE roster_items (
    username     TEXT    NOT NULL,
    jid          TEXT    NOT NULL,
    name         TEXT,
    subscription TEXT    NOT NULL CHECK (subscription IN ('none', 'to', 'from', 'both')),
    ask          INTEGER NOT NULL,  -- 1: outbound subscribe pending (ask='subscribe')
    approved     INTEGER NOT NULL,  -- 1: inbound subscription pre-approved (RFC 6121 §3.4)
    PRIMARY KEY (username, jid)
) WITHOUT ROWID;

-- A row per group of an item, so names with commas or any other character need no escaping;
-- `position` keeps the order the client gave.
CREATE TABLE roster_groups (
    username TEXT    NOT NULL,
    jid      TEXT    NOT NULL,
    position INTEGER NOT NULL,
    name     TEXT    NOT NULL,
    PRIMARY KEY (username, jid, position),
    FOREIGN KEY (username, jid) REFERENCES roster_items (username, jid) ON DELETE CASCADE
) WITHOUT ROWID;

-- RFC 6121 §3.1.3: inbound subscription requests the user has not answered yet, with the
-- stanza to deliver again at the next login. `id` orders them oldest first.
CREATE TABLE pending_in (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT    NOT NULL,
    contact  TEXT    NOT NULL,
    stanza   TEXT    NOT NULL,
    UNIQUE (username, contact)
);
CREATE INDEX pending_in_by_user ON pending_in (username, id);

-- XEP-0160 offline messages. AUTOINCREMENT: ids only grow, even after every row was deleted,
-- so "delete up to id N" never hits a message stored later.
CREATE TABLE offline_messages (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT    NOT NULL,
    stanza   TEXT    NOT NULL,
    stamp_ms INTEGER NOT NULL  -- unix milliseconds when it was stored (XEP-0203 stamp)
);
CREATE INDEX offline_messages_by_user ON offline_messages (username, id);

-- XEP-0054: the user's <vCard/> element as XML.
CREATE TABLE vcards (
    username TEXT PRIMARY KEY NOT NULL,
    xml      TEXT NOT NULL
) WITHOUT ROWID;
