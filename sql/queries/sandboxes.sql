-- Sandbox lifecycle: rows, conditional status transitions, activity, idle and reconciliation.
-- Names start with `sbx_` (query names are global).

-- name: sbx_insert :one
INSERT INTO sandboxes (id, workspace_id, name, type, status, created_by, agent_secret, private)
VALUES (:id, :workspace_id, :name, :type, 'creating', :created_by, :agent_secret, :private)
RETURNING id, workspace_id, name, type, status, status_reason, created_by, created_at, updated_at,
          last_activity_at, paused_at, agent_secret, endpoint_host, endpoint_port, backend_ref,
          last_heartbeat_at, private, version;

-- name: sbx_get :one
SELECT id, workspace_id, name, type, status, status_reason, created_by, created_at, updated_at,
       last_activity_at, paused_at, agent_secret, endpoint_host, endpoint_port, backend_ref,
       last_heartbeat_at, private, paused_reason, paused_by, paused_idle_seconds, version,
       (SELECT username FROM users WHERE users.id = sandboxes.paused_by) AS paused_by_name
FROM sandboxes WHERE id = :id;

-- name: sbx_list_workspace :many
SELECT id, workspace_id, name, type, status, status_reason, created_by, created_at, updated_at,
       last_activity_at, paused_at, agent_secret, endpoint_host, endpoint_port, backend_ref,
       last_heartbeat_at, private, paused_reason, paused_by, paused_idle_seconds, version,
       (SELECT username FROM users WHERE users.id = sandboxes.paused_by) AS paused_by_name
FROM sandboxes WHERE workspace_id = :workspace_id ORDER BY created_at, id;

-- name: sbx_list_all :many
-- Every sandbox (for reconciliation at start).
SELECT id, workspace_id, name, type, status, status_reason, created_by, created_at, updated_at,
       last_activity_at, paused_at, agent_secret, endpoint_host, endpoint_port, backend_ref,
       last_heartbeat_at, private
FROM sandboxes ORDER BY created_at, id;

-- name: sbx_set_status :one
-- The one conditional transition: nothing changes unless the row is still in an expected status.
-- Entering `running` records the endpoint and counts as activity; `paused` stamps paused_at;
-- leaving `running` forgets the endpoint (a stopped agent has none). Entering `pausing` records
-- why (idle or by whom); running again forgets it.
UPDATE sandboxes SET
    status = :new,
    status_reason = :reason,
    updated_at = now(),
    endpoint_host = CASE WHEN :new = 'running' THEN COALESCE(:endpoint_host, endpoint_host)
                         WHEN :new = 'pausing' THEN endpoint_host ELSE NULL END,
    endpoint_port = CASE WHEN :new = 'running' THEN COALESCE(:endpoint_port, endpoint_port)
                         WHEN :new = 'pausing' THEN endpoint_port ELSE NULL END,
    last_activity_at = CASE WHEN :new = 'running' THEN now() ELSE last_activity_at END,
    paused_at = CASE WHEN :new = 'paused' THEN now() WHEN :new = 'running' THEN NULL
                     ELSE paused_at END,
    paused_reason = CASE WHEN :new = 'pausing' THEN CAST(:paused_reason AS TEXT)
                         WHEN :new = 'running' THEN NULL ELSE paused_reason END,
    paused_by = CASE WHEN :new = 'pausing' THEN CAST(:paused_by AS TEXT)
                     WHEN :new = 'running' THEN NULL ELSE paused_by END,
    paused_idle_seconds = CASE WHEN :new = 'pausing' THEN CAST(:paused_idle_seconds AS FLOAT8)
                               WHEN :new = 'running' THEN NULL ELSE paused_idle_seconds END
WHERE id = :id AND status = ANY(:expected)
RETURNING id, workspace_id, name, type, status, status_reason, created_by, created_at, updated_at,
          last_activity_at, paused_at, agent_secret, endpoint_host, endpoint_port, backend_ref,
          last_heartbeat_at, private, paused_reason, paused_by, paused_idle_seconds, version,
          (SELECT username FROM users WHERE users.id = sandboxes.paused_by) AS paused_by_name;

-- name: sbx_set_proxy_token :execrows
UPDATE sandboxes SET proxy_token_hash = :proxy_token_hash WHERE id = :id;

-- name: sbx_touch :execrows
UPDATE sandboxes SET last_activity_at = now() WHERE id = :id AND last_activity_at < now();

-- name: sbx_delete :execrows
DELETE FROM sandboxes WHERE id = :id;

-- name: sbx_list_idle :many
-- Running backend sandboxes with no activity for their workspace's idle timeout (its own, or
-- `seconds`, the server's); a workspace whose timeout is 0 never pauses. `idle_seconds` is the
-- timeout that applied.
SELECT s.id, COALESCE(w.idle_timeout_seconds, CAST(:seconds AS FLOAT8)) AS idle_seconds
FROM sandboxes s JOIN workspaces w ON w.id = s.workspace_id
WHERE s.status = 'running' AND s.type <> 'local'
  AND COALESCE(w.idle_timeout_seconds, CAST(:seconds AS FLOAT8)) > 0
  AND s.last_activity_at <= now() - make_interval(secs => COALESCE(w.idle_timeout_seconds, CAST(:seconds AS FLOAT8)));

-- name: sbx_next_idle_in :scalar
-- Seconds until the next running backend sandbox becomes idle under its workspace's timeout;
-- or sooner, the shortest timeout any workspace has (a sandbox may start there meanwhile).
-- NULL: none is running and no workspace's timeout is shorter than `seconds`.
SELECT LEAST(
    (SELECT EXTRACT(EPOCH FROM (min(s.last_activity_at
                                    + make_interval(secs => COALESCE(w.idle_timeout_seconds, CAST(:seconds AS FLOAT8))))
                                - now()))::float8
     FROM sandboxes s JOIN workspaces w ON w.id = s.workspace_id
     WHERE s.status = 'running' AND s.type <> 'local'
       AND COALESCE(w.idle_timeout_seconds, CAST(:seconds AS FLOAT8)) > 0),
    (SELECT min(idle_timeout_seconds)::float8 FROM workspaces
     WHERE idle_timeout_seconds > 0 AND idle_timeout_seconds < CAST(:seconds AS FLOAT8)));

-- name: sbx_rename :one
-- Rename (the unique index sandboxes_workspace_name_key refuses a duplicate).
UPDATE sandboxes SET name = :name, updated_at = now() WHERE id = :id
RETURNING id, workspace_id, name, type, status, status_reason, created_by, created_at, updated_at,
          last_activity_at, paused_at, agent_secret, endpoint_host, endpoint_port, backend_ref,
          last_heartbeat_at, private, paused_reason, paused_by, paused_idle_seconds, version,
          (SELECT username FROM users WHERE users.id = sandboxes.paused_by) AS paused_by_name;

-- name: sbx_name_taken :scalar
-- Whether the workspace already has a sandbox of this name (trimmed, ignoring case), as the
-- unique index sandboxes_workspace_name_key sees it.
SELECT EXISTS (SELECT 1 FROM sandboxes
               WHERE workspace_id = :workspace_id AND lower(btrim(name)) = lower(btrim(:name)));

-- name: sbx_set_private :one
-- Make a sandbox private or not (migration 0011); the row as sbx_get reads it.
UPDATE sandboxes SET private = :private, updated_at = now() WHERE id = :id
RETURNING id, workspace_id, name, type, status, status_reason, created_by, created_at, updated_at,
          last_activity_at, paused_at, agent_secret, endpoint_host, endpoint_port, backend_ref,
          last_heartbeat_at, private, paused_reason, paused_by, paused_idle_seconds, version,
          (SELECT username FROM users WHERE users.id = sandboxes.paused_by) AS paused_by_name;

-- name: sbx_end_private_sessions :many
-- A sandbox just made private: end the subdomain sessions of everyone but its creator and the
-- roles that may see others' private sandboxes (`keep_roles`); who lost one.
DELETE FROM sandbox_sessions ss USING sandboxes s, workspace_members m
WHERE ss.sandbox_id = :id AND s.id = ss.sandbox_id
  AND m.workspace_id = s.workspace_id AND m.user_id = ss.user_id
  AND ss.user_id IS DISTINCT FROM s.created_by AND NOT (m.role = ANY(:keep_roles))
RETURNING ss.user_id;
