-- A workspace's own idle timeout, in seconds: NULL follows the server's --idle-timeout; 0 never
-- pauses (accepted only when the server sets no maximum, --max-idle-timeout 0).
ALTER TABLE workspaces
    ADD COLUMN idle_timeout_seconds INTEGER CHECK (idle_timeout_seconds >= 0);
