-- Accounts with SCRAM keys (RFC 5802 §3) for SHA-1 and SHA-256; never the password.
-- One salt and iteration count serve both hashes. The MySQL/MariaDB twin of
-- migrations/sqlite/0001_accounts.sql.
--
-- Usernames are VARBINARY: compared and sorted by their UTF-8 bytes (like SQLite's BINARY
-- collation and Rust's `str`), and short enough for InnoDB keys (1023 bytes, RFC 7622 §3.3.1;
-- a utf8mb4 VARCHAR(1023) would count 4 bytes per character, past InnoDB's 3072-byte limit).
CREATE TABLE accounts (
    username      VARBINARY(1023) NOT NULL PRIMARY KEY,  -- normalised localpart
    salt          VARBINARY(255)  NOT NULL,
    iterations    BIGINT          NOT NULL,
    sha1_stored   VARBINARY(64)   NOT NULL,
    sha1_server   VARBINARY(64)   NOT NULL,
    sha256_stored VARBINARY(64)   NOT NULL,
    sha256_server VARBINARY(64)   NOT NULL,
    created_at    BIGINT          NOT NULL               -- unix seconds
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
