-- The MySQL/MariaDB twin of migrations/sqlite/0005_held.sql: messages and subscription
-- requests a node holds for a farm node that is down, written to it in order when its link is
-- back, then deleted. Every slave shares this table; `holder` keeps each one's apart.
CREATE TABLE held (
    id       BIGINT          NOT NULL AUTO_INCREMENT PRIMARY KEY,
    holder   VARBINARY(255)  NOT NULL,
    node     VARBINARY(255)  NOT NULL,
    username VARBINARY(1023) NOT NULL,
    stanza   MEDIUMTEXT      NOT NULL,
    stamp_ms BIGINT          NOT NULL,
    KEY held_by_node (holder, node, id),
    KEY held_by_user (holder, node, username)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
