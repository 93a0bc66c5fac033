-- The audit log: append-only. Rows are never changed; only retention pruning deletes, and
-- only rows older than a day (retention is whole days), so a slip in code cannot erase
-- what just happened.
CREATE TABLE audit_log (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             TIMESTAMPTZ NOT NULL,
    actor_kind     TEXT NOT NULL CHECK (actor_kind IN ('user', 'token', 'agent', 'system')),
    actor_id       TEXT,
    -- Captured when written: a deleted user's entries stay readable.
    actor_name     TEXT,
    -- The user a token acts for (the user themself for a user).
    actor_user_id  TEXT,
    action         TEXT NOT NULL,
    target_kind    TEXT,
    target_id      TEXT,
    target_name    TEXT,
    -- No foreign keys: entries outlive the users, workspaces and sandboxes they name.
    workspace_id   TEXT,
    client_address TEXT,
    result         TEXT NOT NULL CHECK (result IN ('ok', 'refused', 'failed')),
    reason         TEXT,
    details        JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_workspace_idx ON audit_log (workspace_id, id);
CREATE INDEX audit_log_at_idx ON audit_log (at);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.at < now() - interval '1 day' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_recent_delete BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
