-- Accounts with SCRAM keys (RFC 5802 §3) for SHA-1 and SHA-256; never the password.
-- One salt and iteration count serve both hashes.
CREATE TABLE accounts (
    username      TEXT    PRIMARY KEY NOT NULL,  -- normalised localpart
    salt          BLOB    NOT NULL,
    iterations    INTEGER NOT NULL,
    sha1_stored   BLOB    NOT NULL,
    sha1_server   BLOB    NOT NULL,
    sha256_stored BLOB    NOT NULL,
    sha256_server BLOB    NOT NULL,
    created_at    INTEGER NOT NULL               -- unix seconds
);
