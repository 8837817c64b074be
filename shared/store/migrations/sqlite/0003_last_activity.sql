-- XEP-0012 last activity: when each user last went unavailable (their last resource or any
-- one: a user who is online is answered 0 without reading this), with the status text of that
-- unavailable presence. One row per user, replaced at every logout.
CREATE TABLE last_activity (
    username TEXT    PRIMARY KEY NOT NULL,
    stamp_ms INTEGER NOT NULL,  -- unix milliseconds of the logout
    status   TEXT    NOT NULL   -- <status/> of the unavailable presence; '' for none
) WITHOUT ROWID;
