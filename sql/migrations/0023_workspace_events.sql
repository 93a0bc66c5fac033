-- Workspace events across replicas (issue 16): every change a dashboard shows is announced on
-- channel `workspace_event` in the transaction that makes it, with ids only as its payload;
-- each replica's listener re-reads what changed and hands it to its own event streams
-- (sandboxes/event_relay.py).

-- A sandbox's version: a fresh number from one sequence whenever something a dashboard shows
-- (or the proxy routes by) changes -- not activity or heartbeat stamps, not token hashes (whose
-- caches follow migration 0020's notices) -- so a replica never hands its streams an older row
-- after a newer one, and the notice of a change it handed on already is dropped. Taken in a
-- BEFORE trigger, with the row locked: a later change of a row always has a larger number.
CREATE SEQUENCE sandbox_versions;
ALTER TABLE sandboxes ADD COLUMN version BIGINT NOT NULL DEFAULT nextval('sandbox_versions');

CREATE FUNCTION agentserver_sandbox_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.workspace_id, NEW.name, NEW.type, NEW.status, NEW.status_reason, NEW.created_by,
        NEW.paused_at, NEW.endpoint_host, NEW.endpoint_port, NEW.backend_ref, NEW.private,
        NEW.paused_reason, NEW.paused_by, NEW.paused_idle_seconds)
       IS DISTINCT FROM
       (OLD.workspace_id, OLD.name, OLD.type, OLD.status, OLD.status_reason, OLD.created_by,
        OLD.paused_at, OLD.endpoint_host, OLD.endpoint_port, OLD.backend_ref, OLD.private,
        OLD.paused_reason, OLD.paused_by, OLD.paused_idle_seconds) THEN
        NEW.version := nextval('sandbox_versions');
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER sandboxes_version BEFORE UPDATE ON sandboxes FOR EACH ROW
    EXECUTE FUNCTION agentserver_sandbox_version();

-- Payload: "sandbox <workspace id> <sandbox id>" (the workspace, so a deleted sandbox's event
-- still finds its streams).
CREATE FUNCTION agentserver_sandbox_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('workspace_event', 'sandbox ' || OLD.workspace_id || ' ' || OLD.id);
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.workspace_id IS DISTINCT FROM NEW.workspace_id THEN
        PERFORM pg_notify('workspace_event', 'sandbox ' || OLD.workspace_id || ' ' || OLD.id);
    END IF;
    PERFORM pg_notify('workspace_event', 'sandbox ' || NEW.workspace_id || ' ' || NEW.id);
    RETURN NULL;
END $$;

CREATE TRIGGER sandboxes_event_inserted AFTER INSERT ON sandboxes FOR EACH ROW
    EXECUTE FUNCTION agentserver_sandbox_event();
CREATE TRIGGER sandboxes_event_updated AFTER UPDATE ON sandboxes FOR EACH ROW
    WHEN (OLD.version IS DISTINCT FROM NEW.version)
    EXECUTE FUNCTION agentserver_sandbox_event();
CREATE TRIGGER sandboxes_event_deleted AFTER DELETE ON sandboxes FOR EACH ROW
    EXECUTE FUNCTION agentserver_sandbox_event();

-- The ports a running sandbox serves, as the replicas' preview watchers last saw them. A
-- watcher writes what it sees only when it differs from what is stored, so when several
-- replicas watch the same sandbox one of them announces a change, once
-- (query preview_serving_set; the payload "previews <workspace id> <sandbox id> <origin>" names
-- the process that announced it, which has delivered it to its own streams already).
CREATE TABLE preview_serving (
    sandbox_id TEXT PRIMARY KEY REFERENCES sandboxes(id) ON DELETE CASCADE,
    ports      INTEGER[] NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A sandbox that stops running serves nothing: forget what was seen, so that it running again
-- with the same ports is a change again (as it was when each watcher kept this in memory).
CREATE FUNCTION agentserver_preview_serving_stopped() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM preview_serving WHERE sandbox_id = NEW.id;
    RETURN NULL;
END $$;

CREATE TRIGGER sandboxes_preview_serving_stopped AFTER UPDATE OF status ON sandboxes
    FOR EACH ROW
    WHEN (OLD.status = 'running' AND NEW.status IS DISTINCT FROM 'running')
    EXECUTE FUNCTION agentserver_preview_serving_stopped();
