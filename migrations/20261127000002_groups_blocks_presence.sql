-- The rest of PROTOCOL §11's tables, with their keys. Written by the group, block-list and
-- presence features (groups: issue "Groups…", blocks: "Policy chain…", presence: "Groups…").

CREATE TABLE IF NOT EXISTS groups (
    uid         TEXT    NOT NULL PRIMARY KEY,
    app_id      TEXT    NOT NULL,
    name        TEXT,
    owner       TEXT,
    members     TEXT    NOT NULL,  -- JSON object {"member_id": 1, …}
    attributes  TEXT,              -- JSON
    created_on  BIGINT  NOT NULL,
    updated_on  BIGINT  NOT NULL
);

CREATE TABLE IF NOT EXISTS blocks (
    app_id      TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    other_id    TEXT    NOT NULL,
    created_on  BIGINT  NOT NULL,
    PRIMARY KEY (app_id, user_id, other_id)
);

CREATE TABLE IF NOT EXISTS presence (
    app_id      TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    online      BOOLEAN NOT NULL DEFAULT FALSE,
    clients     BIGINT  NOT NULL DEFAULT 0,
    last_seen   BIGINT,
    PRIMARY KEY (app_id, user_id)
);
