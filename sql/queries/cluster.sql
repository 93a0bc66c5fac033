-- Replicas and what they share. Names start with `cluster_`.

-- name: cluster_replica_join :exec
INSERT INTO replicas (id, relay_url, draining) VALUES (:id, :relay_url, :draining)
ON CONFLICT (id) DO UPDATE
SET relay_url = EXCLUDED.relay_url, draining = EXCLUDED.draining, heartbeat_at = now();

-- name: cluster_replica_beat :execrows
-- Zero rows: the row was removed (pruned as dead after a long stall); the caller joins again.
UPDATE replicas SET heartbeat_at = now(), draining = :draining WHERE id = :id;

-- name: cluster_replica_leave :exec
DELETE FROM replicas WHERE id = :id;

-- name: cluster_replicas :many
-- Every replica on record, with whether its heartbeat is recent enough to count as alive.
SELECT id, relay_url, started_at, heartbeat_at, draining,
       heartbeat_at > now() - make_interval(secs => :dead_after) AS alive
FROM replicas ORDER BY started_at, id;

-- name: cluster_replica :one
SELECT id, relay_url, started_at, heartbeat_at, draining,
       heartbeat_at > now() - make_interval(secs => :dead_after) AS alive
FROM replicas WHERE id = :id;

-- name: cluster_replicas_prune :execrows
-- Rows of replicas dead for a long while (their work was taken over long ago).
DELETE FROM replicas WHERE heartbeat_at < now() - make_interval(secs => :forget_after);

-- name: cluster_secret :scalar
-- The named secret: the one on record, or `:value` made the record if there is none yet
-- (two replicas racing both read the winner's).
WITH made AS (
    INSERT INTO cluster_secrets (name, value) VALUES (:name, :value)
    ON CONFLICT (name) DO NOTHING
    RETURNING value
)
SELECT value FROM made
UNION ALL
SELECT value FROM cluster_secrets WHERE name = :name
LIMIT 1;

-- name: cluster_announce_revocation :exec
-- Access ended: every replica's listener ends what it holds of it (api/revocation.py).
SELECT pg_notify('access_revoked', :payload);
