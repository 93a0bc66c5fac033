-- Local agents: registration codes, tunnel tokens and tunnel status. Names start with `agent_`.

-- name: agent_create_code :scalar
INSERT INTO agent_codes (code_hash, workspace_id, user_id, expires_at)
VALUES (:code_hash, :workspace_id, :user_id, now() + make_interval(secs => :lifetime))
RETURNING expires_at;

-- name: agent_delete_stale_codes :execrows
-- Codes expired or used over a day ago: kept a while so a late retry gets "already used".
DELETE FROM agent_codes WHERE expires_at < now() - interval '1 day';

-- name: agent_revoke_member_codes :execrows
-- A member removed, or demoted to a role that may not add agents: their unspent codes go.
DELETE FROM agent_codes
WHERE workspace_id = :workspace_id AND user_id = :user_id AND used_at IS NULL;

-- name: agent_spend_code :one
-- Atomic: only the first caller gets `fresh`; later ones see why the code is no good.
WITH spent AS (
    UPDATE agent_codes SET used_at = now()
    WHERE code_hash = :code_hash AND used_at IS NULL AND expires_at > now()
    RETURNING workspace_id, user_id
)
SELECT c.workspace_id, c.user_id,
       (s.workspace_id IS NOT NULL) AS fresh,
       (c.used_at IS NOT NULL AND s.workspace_id IS NULL) AS used,
       (c.expires_at <= now()) AS expired
FROM agent_codes c LEFT JOIN spent s ON true
WHERE c.code_hash = :code_hash;

-- name: agent_insert_sandbox :one
INSERT INTO sandboxes (id, workspace_id, name, type, status, status_reason, created_by,
                       agent_secret, tunnel_token_hash)
VALUES (:id, :workspace_id, :name, 'local', 'offline', 'waiting for the agent to connect',
        :created_by, :agent_secret, :tunnel_token_hash)
RETURNING id, workspace_id, name, type, status, status_reason, created_by, created_at, updated_at,
          last_activity_at, paused_at, agent_secret, endpoint_host, endpoint_port, backend_ref,
          last_heartbeat_at, private, version;

-- name: agent_tunnel_sandbox :one
-- The local sandbox a tunnel token opens (no row: wrong token, deleted or revoked).
SELECT id, workspace_id, name, type, status, status_reason, created_by, created_at, updated_at,
       last_activity_at, paused_at, agent_secret, endpoint_host, endpoint_port, backend_ref,
       last_heartbeat_at, private
FROM sandboxes WHERE id = :id AND type = 'local' AND tunnel_token_hash = :tunnel_token_hash;

-- name: agent_heartbeat :execrows
-- Zero rows: the sandbox was deleted or its token revoked, so the tunnel must close.
UPDATE sandboxes SET last_heartbeat_at = now()
WHERE id = :id AND type = 'local' AND tunnel_token_hash = :tunnel_token_hash;

-- name: agent_set_health :one
-- A running local sandbox's opencode health as its status reason (NULL: answering); no row
-- when nothing changed or the sandbox is no longer running.
UPDATE sandboxes SET status_reason = :reason, updated_at = now()
WHERE id = :id AND type = 'local' AND status = 'running'
  AND status_reason IS DISTINCT FROM CAST(:reason AS TEXT)
RETURNING id, workspace_id, name, type, status, status_reason, created_by, created_at, updated_at,
          last_activity_at, paused_at, agent_secret, endpoint_host, endpoint_port, backend_ref,
          last_heartbeat_at, private, paused_reason, paused_by, paused_idle_seconds, version,
          (SELECT username FROM users WHERE users.id = sandboxes.paused_by) AS paused_by_name;
