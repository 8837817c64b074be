-- Messages and subscription requests this node holds for a farm node that is down (issue 14):
-- written to it in order when its link is back, then deleted. `holder` is the node that holds
-- them (one file per slave here, but the same shape as the central database's table).
CREATE TABLE held (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    holder   TEXT    NOT NULL,
    node     TEXT    NOT NULL,  -- the node they are for
    username TEXT    NOT NULL,  -- the recipient's localpart, for the per-user bound
    stanza   TEXT    NOT NULL,
    stamp_ms INTEGER NOT NULL   -- unix milliseconds when it was held
);
CREATE INDEX held_by_node ON held (holder, node, id);
CREATE INDEX held_by_user ON held (holder, node, username);
