-- A conversation's last message is decided by the engine's receive time, never by the
-- client's `timestamp` (PROTOCOL §11): a message stamped far in the future used to freeze
-- the conversation. Existing rows take their message's timestamp, the best time known.

ALTER TABLE conversations ADD COLUMN received_at BIGINT NOT NULL DEFAULT 0;
UPDATE conversations SET received_at = timestamp;

-- A user's conversation list, newest first, by the same clock.
DROP INDEX IF EXISTS conversations_by_recency;
CREATE INDEX IF NOT EXISTS conversations_by_received ON conversations (timeline_of, archived, received_at);
