-- Previews (issue 18): which ports of a sandbox a member made public (reachable without
-- signing in), by whom and when. A row with public = false records who made it private again.
-- Pausing a sandbox makes every one of its ports private (the trigger below), whatever pauses it
-- (a member, the idle watcher, a restart of the server's reconciliation).
CREATE TABLE preview_ports (
    sandbox_id  TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    port        INTEGER NOT NULL CHECK (port BETWEEN 1024 AND 65535),
    public      BOOLEAN NOT NULL,
    changed_by  TEXT REFERENCES users(id) ON DELETE SET NULL,
    changed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (sandbox_id, port)
);

CREATE FUNCTION preview_ports_private_on_pause() RETURNS trigger AS $$
BEGIN
    UPDATE preview_ports SET public = false, changed_by = NULL, changed_at = now()
    WHERE sandbox_id = NEW.id AND public;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER preview_ports_private_on_pause
    AFTER UPDATE OF status ON sandboxes
    FOR EACH ROW
    WHEN (NEW.status IN ('pausing', 'paused') AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION preview_ports_private_on_pause();
