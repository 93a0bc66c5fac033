-- Tokens a call in flight holds of its workspace's daily quota (its input estimate + max_tokens),
-- counted by admission until the call's real usage replaces it (the row's status is then set).
ALTER TABLE llm_usage ADD COLUMN reserved_tokens BIGINT NOT NULL DEFAULT 0
    CHECK (reserved_tokens >= 0);
