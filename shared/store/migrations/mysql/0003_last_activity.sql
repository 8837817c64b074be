-- XEP-0012 last activity: the MySQL/MariaDB twin of migrations/sqlite/0003_last_activity.sql.
-- When each user last went unavailable, with the status text of that unavailable presence; one
-- row per user, replaced at every logout.
CREATE TABLE last_activity (
    username VARBINARY(1023) NOT NULL PRIMARY KEY,
    stamp_ms BIGINT          NOT NULL,  -- unix milliseconds of the logout
    status   TEXT            NOT NULL   -- <status/> of the unavailable presence; '' for none
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
