-- Users who have logged in on this farm at least once, kept where the account backend cannot
-- look a user up without a password (LDAP with bind_dn and no service account): a message to
-- such a user who is offline is kept (offline storage) only if the user is known here, so
-- messages to names that have no account are bounced instead of piling up.
CREATE TABLE known_users (
    username       TEXT    PRIMARY KEY NOT NULL,
    first_login_ms INTEGER NOT NULL  -- unix milliseconds of the first login seen
) WITHOUT ROWID;
