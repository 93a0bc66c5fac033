-- Tunnel ownership between replicas (migration 0022). Names start with `tunnel_`.

-- name: tunnel_claim :scalar
-- This replica accepted a tunnel for the sandbox: it owns it now, under a new generation
-- (whoever owned it before is superseded).
INSERT INTO tunnel_owners (sandbox_id, replica_id, generation)
VALUES (:sandbox_id, :replica_id, nextval('tunnel_generation'))
ON CONFLICT (sandbox_id) DO UPDATE
SET replica_id = EXCLUDED.replica_id, generation = EXCLUDED.generation, claimed_at = now()
RETURNING generation;

-- name: tunnel_release :execrows
-- The tunnel ended: its row goes only if no newer tunnel took the sandbox over meanwhile.
DELETE FROM tunnel_owners WHERE sandbox_id = :sandbox_id AND generation = :generation;

-- name: tunnel_still_owner :scalar
-- Whether the tunnel of `generation` is still the sandbox's (false: superseded or swept).
SELECT EXISTS (
    SELECT 1 FROM tunnel_owners WHERE sandbox_id = :sandbox_id AND generation = :generation
);

-- name: tunnel_owner :one
-- Who serves the sandbox's tunnel, where to relay to, and whether that replica is alive.
-- A replica that stopped cleanly (no row) with the row still naming it let its tunnel move
-- (a drain keeps the row until the agent's new tunnel takes it over): `draining` then too.
SELECT o.replica_id, o.generation, coalesce(r.relay_url, '') AS relay_url,
       coalesce(r.heartbeat_at > now() - make_interval(secs => :dead_after), false) AS alive,
       coalesce(r.draining, true) AS draining
FROM tunnel_owners o LEFT JOIN replicas r ON r.id = o.replica_id
WHERE o.sandbox_id = :sandbox_id;

-- name: tunnel_forget_dead :execrows
-- Ownership of replicas that are dead (heartbeat too old) or gone (no row): nobody serves those
-- tunnels any more. A row a live replica took over meanwhile is not touched.
-- The sweeping replica never counts itself dead: a heartbeat it was slow to write (a stalled
-- machine) must not make it drop its own live tunnels; the others judge it by its heartbeat.
DELETE FROM tunnel_owners o
WHERE o.replica_id <> :me AND NOT EXISTS (
    SELECT 1 FROM replicas r
    WHERE r.id = o.replica_id AND r.heartbeat_at > now() - make_interval(secs => :dead_after)
);

-- name: tunnel_all_unowned_offline :many
-- Running local sandboxes that no live replica serves a tunnel for are offline (at start, and
-- swept periodically; idempotent, and never one whose tunnel a live replica holds).
UPDATE sandboxes s SET status = 'offline', status_reason = 'waiting for the agent to reconnect',
       updated_at = now()
WHERE s.type = 'local' AND s.status = 'running'
  AND NOT EXISTS (
    SELECT 1 FROM tunnel_owners o JOIN replicas r ON r.id = o.replica_id
    WHERE o.sandbox_id = s.id
      AND (r.id = :me OR r.heartbeat_at > now() - make_interval(secs => :dead_after))
  )
RETURNING s.id, s.workspace_id, s.name, s.type, s.status, s.status_reason, s.created_by,
          s.created_at, s.updated_at, s.last_activity_at, s.paused_at, s.agent_secret,
          s.endpoint_host, s.endpoint_port, s.backend_ref, s.last_heartbeat_at, s.private,
          s.paused_reason, s.paused_by, s.paused_idle_seconds, s.version,
          (SELECT username FROM users WHERE users.id = s.paused_by) AS paused_by_name;

-- name: tunnel_mark_running :one
-- An offline local sandbox is running while the tunnel of `generation` owns it (a superseded
-- tunnel's late write changes nothing).
UPDATE sandboxes s SET status = 'running', status_reason = NULL, updated_at = now(),
       last_activity_at = now()
WHERE s.id = :sandbox_id AND s.type = 'local' AND s.status = 'offline'
  AND EXISTS (
    SELECT 1 FROM tunnel_owners WHERE sandbox_id = :sandbox_id AND generation = :generation
  )
RETURNING s.id, s.workspace_id, s.name, s.type, s.status, s.status_reason, s.created_by,
          s.created_at, s.updated_at, s.last_activity_at, s.paused_at, s.agent_secret,
          s.endpoint_host, s.endpoint_port, s.backend_ref, s.last_heartbeat_at, s.private,
          s.paused_reason, s.paused_by, s.paused_idle_seconds, s.version,
          (SELECT username FROM users WHERE users.id = s.paused_by) AS paused_by_name;

-- name: tunnel_mark_offline :one
-- A running local sandbox whose tunnel ended is offline, unless a live replica owns a newer one.
UPDATE sandboxes s SET status = 'offline', status_reason = :reason, updated_at = now()
WHERE s.id = :sandbox_id AND s.type = 'local' AND s.status = 'running'
  AND NOT EXISTS (
    SELECT 1 FROM tunnel_owners o JOIN replicas r ON r.id = o.replica_id
    WHERE o.sandbox_id = s.id
      AND (r.id = :me OR r.heartbeat_at > now() - make_interval(secs => :dead_after))
  )
RETURNING s.id, s.workspace_id, s.name, s.type, s.status, s.status_reason, s.created_by,
          s.created_at, s.updated_at, s.last_activity_at, s.paused_at, s.agent_secret,
          s.endpoint_host, s.endpoint_port, s.backend_ref, s.last_heartbeat_at, s.private,
          s.paused_reason, s.paused_by, s.paused_idle_seconds, s.version,
          (SELECT username FROM users WHERE users.id = s.paused_by) AS paused_by_name;

-- name: tunnel_owned_by :many
-- This replica's ownership rows older than a moment (a claim's tunnel is registered at once):
-- any the replica does not hold a tunnel for were left by a release that failed.
SELECT sandbox_id, generation FROM tunnel_owners
WHERE replica_id = :replica_id AND claimed_at < now() - make_interval(secs => :settled);
