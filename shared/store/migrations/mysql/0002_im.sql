-- Per-user IM data (shared/store/src/im/): roster, pending inbound subscription requests, offline
-- messages, vCards. The MySQL/MariaDB twin of migrations/sqlite/0002_im.sql, shared by every
-- slave of the farm, so a user's data follows the user to whichever slave owns them.
-- Keyed by the normalised localpart; no foreign key to `accounts`, so the same tables serve
-- users whose accounts live elsewhere (LDAP, an existing user table).
-- Usernames and JIDs are VARBINARY (byte order of the UTF-8, as in SQLite and Rust); a bare JID
-- is at most 1023 + 1 + 1023 bytes, so (username, jid) keys stay within InnoDB's 3072 bytes.
-- Text is utf8mb4 with a binary collation.

-- One row per user with IM data. Every write transaction for a user first locks this row
-- (INSERT ... ON DUPLICATE KEY UPDATE takes an exclusive lock), so a user's writes are
-- serialised without gap-lock deadlocks. RFC 6121 §2.6: the roster version counter, bumped by
-- every roster change; it stays when the user's data is deleted.
CREATE TABLE im_users (
    username       VARBINARY(1023) NOT NULL PRIMARY KEY,
    roster_version BIGINT          NOT NULL DEFAULT 0
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- RFC 6121 §2.1: one row per contact (bare JID). `id` lets groups refer to an item with a
-- short key.
CREATE TABLE roster_items (
    id           BIGINT          NOT NULL AUTO_INCREMENT PRIMARY KEY,
    username     VARBINARY(1023) NOT NULL,
    jid          VARBINARY(2047) NOT NULL,
    name         TEXT            NULL,
    subscription VARCHAR(4)      NOT NULL CHECK (subscription IN ('none', 'to', 'from', 'both')),
    ask          BOOLEAN         NOT NULL,  -- outbound subscribe pending (ask='subscribe')
    approved     BOOLEAN         NOT NULL,  -- inbound subscription pre-approved (RFC 6121 §3.4)
    UNIQUE KEY roster_items_by_user (username, jid)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- A row per group of an item, so names with commas or any other character need no escaping;
-- `position` keeps the order the client gave.
CREATE TABLE roster_groups (
    item_id  BIGINT NOT NULL,
    position INT    NOT NULL,
    name     TEXT   NOT NULL,
    PRIMARY KEY (item_id, position),
    CONSTRAINT roster_groups_item FOREIGN KEY (item_id) REFERENCES roster_items (id)
        ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- RFC 6121 §3.1.3: inbound subscription requests the user has not answered yet, with the
-- stanza to deliver again at the next login. `id` orders them oldest first.
CREATE TABLE pending_in (
    id       BIGINT          NOT NULL AUTO_INCREMENT PRIMARY KEY,
    username VARBINARY(1023) NOT NULL,
    contact  VARBINARY(2047) NOT NULL,
    stanza   MEDIUMTEXT      NOT NULL,
    UNIQUE KEY pending_in_by_contact (username, contact),
    KEY pending_in_by_user (username, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- XEP-0160 offline messages. AUTO_INCREMENT ids only grow (persistent since MariaDB 10.2.4 and
-- MySQL 8.0), so "delete up to id N" never hits a message stored later.
CREATE TABLE offline_messages (
    id       BIGINT          NOT NULL AUTO_INCREMENT PRIMARY KEY,
    username VARBINARY(1023) NOT NULL,
    stanza   MEDIUMTEXT      NOT NULL,
    stamp_ms BIGINT          NOT NULL,  -- unix milliseconds when it was stored (XEP-0203 stamp)
    KEY offline_messages_by_user (username, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- XEP-0054: the user's <vCard/> element as XML.
CREATE TABLE vcards (
    username VARBINARY(1023) NOT NULL PRIMARY KEY,
    xml      MEDIUMTEXT      NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
