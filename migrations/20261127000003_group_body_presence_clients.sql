-- Groups keep the whole group object their managing service sent (name, owner, attributes,
-- notification settings, …): it is what `clientupdated` carries and what the HTTP API will
-- return. Presence keeps the set of connected client ids per user, so a redelivered
-- connect/disconnect changes nothing and the count survives an engine restart.

ALTER TABLE groups ADD COLUMN body TEXT;

CREATE TABLE IF NOT EXISTS presence_clients (
    app_id     TEXT    NOT NULL,
    user_id    TEXT    NOT NULL,
    client_id  TEXT    NOT NULL,
    since      BIGINT  NOT NULL,
    PRIMARY KEY (app_id, user_id, client_id)
);
