-- One-time registration codes for local agents (`agentserver agent connect --code`).
-- Only the SHA-256 of a code is stored; a code is spent by the first register call.
CREATE TABLE agent_codes (
    code_hash    TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL,
    used_at      TIMESTAMPTZ
);
CREATE INDEX agent_codes_expires_idx ON agent_codes (expires_at);
