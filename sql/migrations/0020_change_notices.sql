-- Change notices: a change to what the LLM proxy caches in memory (a sandbox's status, token,
-- name, owner or workspace; a workspace's LLM limits) is announced in the transaction that makes
-- it. NOTIFY reaches every replica's listener once the transaction commits (payload: an id
-- only); the NOTICE reaches the session that made the change, so the replica that made it forgets
-- its copy before the statement's caller goes on (db/database.py). Whoever writes these tables,
-- through whichever query, cannot forget to announce it.
CREATE FUNCTION agentserver_announce(channel TEXT, payload TEXT) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(channel, payload);
    RAISE NOTICE USING MESSAGE = 'agentserver change', DETAIL = channel, HINT = payload;
END $$;

CREATE FUNCTION agentserver_sandbox_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM agentserver_announce('sandbox_changed', OLD.id);
    RETURN NULL;
END $$;

CREATE TRIGGER sandboxes_changed AFTER UPDATE ON sandboxes FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.proxy_token_hash IS DISTINCT FROM NEW.proxy_token_hash
          OR OLD.name IS DISTINCT FROM NEW.name
          OR OLD.workspace_id IS DISTINCT FROM NEW.workspace_id
          OR OLD.created_by IS DISTINCT FROM NEW.created_by)
    EXECUTE FUNCTION agentserver_sandbox_changed();
CREATE TRIGGER sandboxes_deleted AFTER DELETE ON sandboxes FOR EACH ROW
    EXECUTE FUNCTION agentserver_sandbox_changed();

CREATE FUNCTION agentserver_llm_quota_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM agentserver_announce('llm_quota_changed', OLD.workspace_id);
    ELSE
        PERFORM agentserver_announce('llm_quota_changed', NEW.workspace_id);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER llm_quotas_changed AFTER INSERT OR UPDATE OR DELETE ON llm_quotas FOR EACH ROW
    EXECUTE FUNCTION agentserver_llm_quota_changed();

-- What each replica's LLM calls in flight hold of a workspace's limits (their reservations of
-- the daily quota and their number), published every sync so other replicas' admission counts
-- them; a row not refreshed for a minute belongs to a replica that died and counts no more.
CREATE TABLE llm_inflight (
    replica_id   TEXT NOT NULL,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    tokens       BIGINT NOT NULL CHECK (tokens >= 0),
    requests     INTEGER NOT NULL CHECK (requests >= 0),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, replica_id)
);
