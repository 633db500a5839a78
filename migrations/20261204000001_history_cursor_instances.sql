-- History pages for the HTTP API (PROTOCOL §14): newest first in a total order, (timestamp,
-- message_id), so a page boundary between two messages of the same millisecond neither
-- repeats nor skips one. The index answers `WHERE app/timeline/conversation AND
-- (timestamp, message_id) < cursor ORDER BY timestamp DESC, message_id DESC LIMIT n` as a
-- range scan; it replaces the one without message_id.
CREATE INDEX IF NOT EXISTS messages_history ON messages (app_id, timeline_of, convers_with, timestamp, message_id);
DROP INDEX IF EXISTS messages_by_conversation;

-- Conversation lists page the same way, by (received_at, convers_with).
CREATE INDEX IF NOT EXISTS conversations_page ON conversations (app_id, timeline_of, archived, received_at, convers_with);
DROP INDEX IF EXISTS conversations_by_received;

-- Device instances a user's apps register (POST /api/{app}/{me}/instances/{instance_id}):
-- kept per user, for push notifications.
CREATE TABLE IF NOT EXISTS instances (
    app_id       TEXT    NOT NULL,
    user_id      TEXT    NOT NULL,
    instance_id  TEXT    NOT NULL,
    body         TEXT    NOT NULL,  -- the device info as the client sent it (JSON object)
    updated_on   BIGINT  NOT NULL,
    PRIMARY KEY (app_id, user_id, instance_id)
);
