-- Why a sandbox was paused, so the page that wakes it and the dashboard can say so: after how
-- long without activity (the idle watcher) or by whom (a member's Pause). Set when the sandbox
-- starts pausing, kept while it is paused and waking, and cleared once it runs again.
ALTER TABLE sandboxes
    ADD COLUMN paused_reason TEXT CHECK (paused_reason IN ('idle', 'user')),
    ADD COLUMN paused_by TEXT REFERENCES users(id) ON DELETE SET NULL,
    ADD COLUMN paused_idle_seconds DOUBLE PRECISION;
