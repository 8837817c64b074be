-- The MySQL/MariaDB twin of migrations/sqlite/0004_known_users.sql: users who have logged in
-- on this farm at least once, for backends that cannot look a user up (LDAP bind mode).
CREATE TABLE known_users (
    username       VARBINARY(1023) NOT NULL PRIMARY KEY,
    first_login_ms BIGINT          NOT NULL  -- unix milliseconds of the first login seen
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
