-- Previews of a sandbox's ports (migration 0019): which are public, by whom, since when.

-- name: preview_public_sandbox :one
-- The sandbox, when its `port` is public (a request needing no sign-in).
SELECT s.id, s.workspace_id, s.name, s.type, s.status, s.status_reason, s.created_by,
       s.created_at, s.updated_at, s.last_activity_at, s.paused_at, s.agent_secret,
       s.endpoint_host, s.endpoint_port, s.backend_ref, s.last_heartbeat_at, s.private,
       s.paused_reason, s.paused_by, s.paused_idle_seconds,
       (SELECT username FROM users WHERE users.id = s.paused_by) AS paused_by_name
FROM preview_ports p JOIN sandboxes s ON s.id = p.sandbox_id
WHERE p.sandbox_id = :sandbox_id AND p.port = :port AND p.public;

-- name: preview_set_public :one
-- Make a port public or private again, recording who and when.
INSERT INTO preview_ports (sandbox_id, port, public, changed_by, changed_at)
VALUES (:sandbox_id, :port, :public, :user_id, now())
ON CONFLICT (sandbox_id, port) DO UPDATE
SET public = EXCLUDED.public, changed_by = EXCLUDED.changed_by, changed_at = EXCLUDED.changed_at
RETURNING port, public, changed_at,
          (SELECT username FROM users WHERE users.id = changed_by) AS changed_by_name;

-- name: preview_marks :many
-- Every port of the sandbox whose public flag was ever set, with who set it last.
SELECT p.port, p.public, p.changed_at, u.username AS changed_by_name
FROM preview_ports p LEFT JOIN users u ON u.id = p.changed_by
WHERE p.sandbox_id = :sandbox_id ORDER BY p.port;
