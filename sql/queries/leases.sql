-- Operation leases on sandboxes and the replica that runs a process sandbox (migration 0024).
-- A lease or a replica counts as gone when its time ran out or its replica is dead: no replicas
-- row with a heartbeat newer than :dead_after seconds.

-- name: sbx_op_claim :scalar
-- Claim (or renew) the operation lease of sandbox :id for :replica: 'claimed', 'held' (another
-- live replica holds it, or waits to delete the sandbox and :supersede is false), or NULL when
-- there is no such sandbox. Claiming clears :replica's own wish to delete.
WITH claimed AS (
    UPDATE sandboxes s SET
        op_owner = :replica,
        op_until = now() + make_interval(secs => :lease),
        op_wanted_until = CASE WHEN s.op_wanted_by = :replica THEN NULL ELSE s.op_wanted_until END,
        op_wanted_by = CASE WHEN s.op_wanted_by = :replica THEN NULL ELSE s.op_wanted_by END
    WHERE s.id = :id
      AND (s.op_owner IS NULL OR s.op_owner = :replica OR s.op_until < now()
           OR NOT EXISTS (SELECT 1 FROM replicas r WHERE r.id = s.op_owner
                          AND r.heartbeat_at > now() - make_interval(secs => :dead_after)))
      AND (CAST(:supersede AS BOOLEAN) OR s.op_wanted_by IS NULL OR s.op_wanted_by = :replica
           OR s.op_wanted_until < now())
    RETURNING s.id
)
SELECT CASE WHEN EXISTS (SELECT 1 FROM claimed) THEN 'claimed'
            WHEN EXISTS (SELECT 1 FROM sandboxes WHERE id = :id) THEN 'held' END;

-- name: sbx_op_want :execrows
-- :replica waits to delete sandbox :id: its lease holder gives up at its next renewal, and no
-- other replica claims the lease before :replica (for :lease seconds, renewed while it waits).
UPDATE sandboxes SET op_wanted_by = :replica, op_wanted_until = now() + make_interval(secs => :lease)
WHERE id = :id;

-- name: sbx_op_renew :scalar
-- Renew :replica's lease; true when another replica waits to delete the sandbox (give up),
-- NULL when the lease is lost (the sandbox is gone, or the lease ran out and was taken).
UPDATE sandboxes SET op_until = now() + make_interval(secs => :lease)
WHERE id = :id AND op_owner = :replica
RETURNING (op_wanted_by IS NOT NULL AND op_wanted_by <> :replica AND op_wanted_until > now());

-- name: sbx_op_release :execrows
UPDATE sandboxes SET op_owner = NULL, op_until = NULL WHERE id = :id AND op_owner = :replica;

-- name: sbx_held_elsewhere :many
-- Sandboxes another live replica works on (an operation lease) or runs (its process sandbox):
-- not for :replica to reconcile.
SELECT s.id FROM sandboxes s
WHERE (s.op_owner IS NOT NULL AND s.op_owner <> :replica AND s.op_until > now()
       AND EXISTS (SELECT 1 FROM replicas r WHERE r.id = s.op_owner
                   AND r.heartbeat_at > now() - make_interval(secs => :dead_after)))
   OR (s.replica_id IS NOT NULL AND s.replica_id <> :replica
       AND EXISTS (SELECT 1 FROM replicas r WHERE r.id = s.replica_id
                   AND r.heartbeat_at > now() - make_interval(secs => :dead_after)));

-- name: sbx_set_replica :execrows
-- The replica whose child process runs sandbox :id from now on (process backend only).
UPDATE sandboxes SET replica_id = :replica WHERE id = :id;

-- name: sbx_orphaned_children :many
-- Running (or stopping) process sandboxes whose replica is dead, with no live operation on
-- them: their process died with it.
SELECT s.id, s.status FROM sandboxes s
WHERE s.replica_id IS NOT NULL AND s.status IN ('running', 'pausing')
  AND NOT EXISTS (SELECT 1 FROM replicas r WHERE r.id = s.replica_id
                  AND r.heartbeat_at > now() - make_interval(secs => :dead_after))
  AND (s.op_owner IS NULL OR s.op_until < now()
       OR NOT EXISTS (SELECT 1 FROM replicas r WHERE r.id = s.op_owner
                      AND r.heartbeat_at > now() - make_interval(secs => :dead_after)))
ORDER BY s.id;

-- name: sbx_children_elsewhere :many
-- Process sandboxes another replica (alive or dead) started: a running one is that replica's
-- to watch while it lives, and the leader's to pause once it died (sandboxes/children.py).
SELECT id FROM sandboxes WHERE replica_id IS NOT NULL AND replica_id <> :replica;
