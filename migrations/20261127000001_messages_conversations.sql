-- Timelines and conversations (PROTOCOL §11). Portable SQL: the same file runs on SQLite
-- and PostgreSQL. JSON is stored as text: it is read back whole, never queried inside.

CREATE TABLE IF NOT EXISTS messages (
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
    PRIMARY KEY (timeline_of, message_id)
);

-- History of one conversation, newest first.
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages (timeline_of, convers_with, timestamp);

CREATE TABLE IF NOT EXISTS conversations (
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
    PRIMARY KEY (timeline_of, convers_with)
);

-- A user's conversation list (active or archived), newest first.
CREATE INDEX IF NOT EXISTS conversations_by_recency ON conversations (timeline_of, archived, timestamp);
