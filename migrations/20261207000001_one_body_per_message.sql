-- One body per message (issue 14): a direct message used to store its whole body four times
-- (two timeline rows, two conversation rows) and a message to a group of 100 members about
-- two hundred times. Now:
--   messages       one row per message: its body and timestamp, keyed by (app, recipient,
--                  id, sender) — a message id is an idempotency key per sender and
--                  conversation, so one user cannot take another's id (issue 11); the only
--                  index a new message inserts into at a random place (ids are random);
--   timeline       one small row per timeline entry, keyed in history order (timeline,
--                  partner, timestamp, id, sender): new rows append at the end of their
--                  conversation, and the key is the history index — no second index; its
--                  status there;
--   conversations  one small row per (timeline, partner): the last message's key, its
--                  status there, is_new, archived, received_at.
-- Reads join the body by its key. Existing rows are converted in place (portable SQL, the
-- same on SQLite and PostgreSQL); the first copy of a body wins, as the old inserts did.

CREATE TABLE message_bodies (
    app_id      TEXT    NOT NULL,
    recipient   TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    sender      TEXT    NOT NULL,
    timestamp   BIGINT  NOT NULL,
    body        TEXT    NOT NULL,
    PRIMARY KEY (app_id, recipient, message_id, sender)
);

CREATE TABLE timeline (
    app_id        TEXT    NOT NULL,
    timeline_of   TEXT    NOT NULL,
    convers_with  TEXT    NOT NULL,
    message_id    TEXT    NOT NULL,
    sender        TEXT    NOT NULL,
    recipient     TEXT    NOT NULL,
    status        BIGINT  NOT NULL,
    timestamp     BIGINT  NOT NULL,
    PRIMARY KEY (app_id, timeline_of, convers_with, timestamp, message_id, sender)
);

CREATE TABLE conversations_slim (
    app_id        TEXT     NOT NULL,
    timeline_of   TEXT     NOT NULL,
    convers_with  TEXT     NOT NULL,
    message_id    TEXT     NOT NULL,
    sender        TEXT     NOT NULL,
    recipient     TEXT     NOT NULL,
    status        BIGINT   NOT NULL,
    is_new        BOOLEAN  NOT NULL,
    archived      BOOLEAN  NOT NULL DEFAULT FALSE,
    received_at   BIGINT   NOT NULL,
    PRIMARY KEY (app_id, timeline_of, convers_with)
);

-- `WHERE TRUE`: SQLite needs it to read `ON CONFLICT` after a SELECT as the upsert clause.
INSERT INTO message_bodies (app_id, recipient, message_id, sender, timestamp, body)
    SELECT app_id, COALESCE(recipient, ''), message_id, COALESCE(sender, ''), timestamp, body FROM messages WHERE TRUE
    ON CONFLICT (app_id, recipient, message_id, sender) DO NOTHING;
-- A conversation's last message may have no timeline row (none is lost either way).
INSERT INTO message_bodies (app_id, recipient, message_id, sender, timestamp, body)
    SELECT app_id, COALESCE(recipient, ''), message_id, COALESCE(sender, ''), timestamp, body FROM conversations WHERE TRUE
    ON CONFLICT (app_id, recipient, message_id, sender) DO NOTHING;
-- A timeline row's timestamp is its body's (what a receipt finds the row by).
INSERT INTO timeline (app_id, timeline_of, convers_with, message_id, sender, recipient, status, timestamp)
    SELECT m.app_id, m.timeline_of, m.convers_with, m.message_id, b.sender, b.recipient, m.status, b.timestamp
    FROM messages m JOIN message_bodies b ON b.app_id = m.app_id AND b.recipient = COALESCE(m.recipient, '')
    AND b.message_id = m.message_id AND b.sender = COALESCE(m.sender, '') WHERE TRUE
    ON CONFLICT (app_id, timeline_of, convers_with, timestamp, message_id, sender) DO NOTHING;
INSERT INTO conversations_slim (app_id, timeline_of, convers_with, message_id, sender, recipient, status, is_new,
    archived, received_at)
    SELECT app_id, timeline_of, convers_with, message_id, COALESCE(sender, ''), COALESCE(recipient, ''), status,
    is_new, archived, received_at FROM conversations;

DROP TABLE messages;
DROP TABLE conversations;
ALTER TABLE message_bodies RENAME TO messages;
ALTER TABLE conversations_slim RENAME TO conversations;

-- Conversation pages: newest first by (received_at, convers_with).
CREATE INDEX conversations_page ON conversations (app_id, timeline_of, archived, received_at, convers_with);
