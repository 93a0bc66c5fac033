-- Calls the LLM proxy refused (quota, rate limit, model, inactive sandbox, route …), counted per
-- sandbox, reason and hour: a sandbox looping on a refusal adds to one row, never one per call.
CREATE TABLE llm_refusals (
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    sandbox_id   TEXT NOT NULL,
    -- Kept so refusals stay readable after the sandbox is deleted.
    sandbox_name TEXT NOT NULL DEFAULT '',
    reason       TEXT NOT NULL,
    bucket       TIMESTAMPTZ NOT NULL,
    count        BIGINT NOT NULL CHECK (count > 0),
    last_at      TIMESTAMPTZ NOT NULL,
    last_model   TEXT,
    PRIMARY KEY (workspace_id, sandbox_id, reason, bucket)
);
CREATE INDEX llm_refusals_workspace_bucket_idx ON llm_refusals (workspace_id, bucket);
