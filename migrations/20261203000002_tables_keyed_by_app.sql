-- Tables keyed by app as well (the tenant), so engines of several apps can share one
-- database: the same user, group or message id in two apps is two rows, never one.
-- SQLite cannot change a primary key in place: each table is rebuilt, rows copied as they
-- are (portable SQL, the same on PostgreSQL), then its indexes made again.

CREATE TABLE messages_by_app (
    timeline_of   TEXT    NOT NULL,
    message_id    TEXT    NOT NULL,
    convers_with  TEXT    NOT NULL,
    app_id        TEXT    NOT NULL,
    sender        TEXT,
    recipient     TEXT,
    status        BIGINT  NOT NULL,
    timestamp     BIGINT  NOT NULL,
    text          TEXT,
    type          TEXT,
    channel_type  TEXT,
    body          TEXT    NOT NULL,
    PRIMARY KEY (app_id, timeline_of, message_id)
);
INSERT INTO messages_by_app (timeline_of, message_id, convers_with, app_id, sender, recipient, status,
    timestamp, text, type, channel_type, body)
    SELECT timeline_of, message_id, convers_with, app_id, sender, recipient, status,
    timestamp, text, type, channel_type, body FROM messages;
DROP TABLE messages;
ALTER TABLE messages_by_app RENAME TO messages;
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages (app_id, timeline_of, convers_with, timestamp);

CREATE TABLE conversations_by_app (
    timeline_of        TEXT     NOT NULL,
    convers_with       TEXT     NOT NULL,
    app_id             TEXT     NOT NULL,
    message_id         TEXT     NOT NULL,
    sender             TEXT,
    recipient          TEXT,
    status             BIGINT   NOT NULL,
    timestamp          BIGINT   NOT NULL,
    last_message_text  TEXT,
    type               TEXT,
    channel_type       TEXT,
    attributes         TEXT,
    is_new             BOOLEAN  NOT NULL,
    archived           BOOLEAN  NOT NULL DEFAULT FALSE,
    body               TEXT     NOT NULL,
    received_at        BIGINT   NOT NULL DEFAULT 0,
    PRIMARY KEY (app_id, timeline_of, convers_with)
);
INSERT INTO conversations_by_app (timeline_of, convers_with, app_id, message_id, sender, recipient, status,
    timestamp, last_message_text, type, channel_type, attributes, is_new, archived, body, received_at)
    SELECT timeline_of, convers_with, app_id, message_id, sender, recipient, status,
    timestamp, last_message_text, type, channel_type, attributes, is_new, archived, body, received_at
    FROM conversations;
DROP TABLE conversations;
ALTER TABLE conversations_by_app RENAME TO conversations;
CREATE INDEX IF NOT EXISTS conversations_by_received ON conversations (app_id, timeline_of, archived, received_at);

CREATE TABLE groups_by_app (
    uid         TEXT    NOT NULL,
    app_id      TEXT    NOT NULL,
    name        TEXT,
    owner       TEXT,
    members     TEXT    NOT NULL,
    attributes  TEXT,
    created_on  BIGINT  NOT NULL,
    updated_on  BIGINT  NOT NULL,
    body        TEXT,
    PRIMARY KEY (app_id, uid)
);
INSERT INTO groups_by_app (uid, app_id, name, owner, members, attributes, created_on, updated_on, body)
    SELECT uid, app_id, name, owner, members, attributes, created_on, updated_on, body FROM groups;
DROP TABLE groups;
ALTER TABLE groups_by_app RENAME TO groups;
