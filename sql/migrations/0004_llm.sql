-- LLM proxy: one row per call forwarded to Anthropic, and per-workspace limit overrides.
CREATE TABLE llm_usage (
    id                          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sandbox_id                  TEXT REFERENCES sandboxes(id) ON DELETE SET NULL,
    workspace_id                TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    -- The sandbox's creator: whose work the tokens were spent on.
    user_id                     TEXT REFERENCES users(id) ON DELETE SET NULL,
    -- Kept so usage stays readable after the sandbox is deleted.
    sandbox_name                TEXT NOT NULL DEFAULT '',
    method                      TEXT NOT NULL,
    endpoint                    TEXT NOT NULL,
    model                       TEXT,
    -- NULL while the call is in flight (it already counts towards the per-minute limit).
    status                      INTEGER,
    streaming                   BOOLEAN NOT NULL DEFAULT false,
    duration_ms                 INTEGER,
    input_tokens                BIGINT NOT NULL DEFAULT 0,
    output_tokens               BIGINT NOT NULL DEFAULT 0,
    cache_creation_input_tokens BIGINT NOT NULL DEFAULT 0,
    cache_read_input_tokens     BIGINT NOT NULL DEFAULT 0,
    created_at                  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX llm_usage_workspace_created_idx ON llm_usage (workspace_id, created_at);
CREATE INDEX llm_usage_sandbox_idx ON llm_usage (sandbox_id);
CREATE INDEX llm_usage_user_idx ON llm_usage (user_id);

-- Per-workspace overrides of the server-wide limits; NULL means "use the server default".
CREATE TABLE llm_quotas (
    workspace_id   TEXT PRIMARY KEY REFERENCES workspaces(id) ON DELETE CASCADE,
    rpm            INTEGER CHECK (rpm >= 0),
    tokens_per_day BIGINT CHECK (tokens_per_day >= 0),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
