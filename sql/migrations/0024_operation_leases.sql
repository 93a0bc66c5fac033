-- Several replicas (issue 16): a backend operation on a sandbox (start, pause, delete) is owned
-- by one replica at a time, through a lease on its row claimed by a conditional UPDATE and
-- renewed while the operation runs. A lease whose time ran out, or whose replica is dead
-- (replicas.heartbeat_at too old), is anybody's. None of these columns fires the change notice
-- of migration 0020: they say who works on a sandbox, not what it is.
ALTER TABLE sandboxes
    -- The replica running an operation on this sandbox now, and until when its lease holds.
    ADD COLUMN op_owner        TEXT,
    ADD COLUMN op_until        TIMESTAMPTZ,
    -- A replica that waits to delete the sandbox: the owner gives its operation up, and other
    -- replicas' new operations wait, until the wish expires (its replica may die meanwhile).
    ADD COLUMN op_wanted_by    TEXT,
    ADD COLUMN op_wanted_until TIMESTAMPTZ,
    -- Process sandboxes only: the replica whose child process runs it (the backend is that
    -- replica's); Docker and Kubernetes sandboxes belong to no replica (NULL).
    ADD COLUMN replica_id      TEXT;
