-- Subdomain proxy: one-time tickets, per-sandbox sessions, and sandbox lookups.

-- name: proxy_get_sandbox :one
SELECT id, workspace_id, name, type, status, status_reason, created_by, created_at, updated_at,
       last_activity_at, paused_at, agent_secret, endpoint_host, endpoint_port, backend_ref,
       last_heartbeat_at, private, paused_reason, paused_by, paused_idle_seconds,
       (SELECT username FROM users WHERE users.id = sandboxes.paused_by) AS paused_by_name
FROM sandboxes WHERE id = :id;

-- name: proxy_member_role :scalar
-- The user's role in the sandbox's workspace (NULL: not a member, or no such sandbox).
SELECT m.role FROM sandboxes s
JOIN workspace_members m ON m.workspace_id = s.workspace_id AND m.user_id = :user_id
WHERE s.id = :sandbox_id;

-- name: proxy_sandbox_privacy :one
-- Whether a sandbox is private, and who created it (no row: no such sandbox).
SELECT private, created_by FROM sandboxes WHERE id = :sandbox_id;

-- name: proxy_create_ticket :exec
-- `session_hash`: the main session that asked; `binding_hash`: the opening browser's nonce hash.
INSERT INTO sandbox_tickets (token_hash, sandbox_id, user_id, session_hash, binding_hash,
                             expires_at)
VALUES (:token_hash, :sandbox_id, :user_id, :session_hash, :binding_hash,
        now() + make_interval(secs => :lifetime));

-- name: proxy_delete_expired_tickets :execrows
DELETE FROM sandbox_tickets WHERE expires_at <= now();

-- name: proxy_redeem_ticket :one
-- Atomic: a ticket is gone after the first attempt, whether or not it was still valid.
DELETE FROM sandbox_tickets WHERE token_hash = :token_hash AND sandbox_id = :sandbox_id
RETURNING user_id, session_hash, binding_hash, expires_at > now() AS valid;

-- name: proxy_create_session :execrows
-- Never outlives the main session it came from (and goes with it: ON DELETE CASCADE).
INSERT INTO sandbox_sessions (token_hash, sandbox_id, user_id, session_hash, expires_at)
SELECT :token_hash, :sandbox_id, :user_id, :session_hash,
       least(now() + make_interval(secs => :lifetime), ms.expires_at)
FROM sessions ms WHERE ms.token_hash = :session_hash AND ms.expires_at > now();

-- name: proxy_delete_expired_sessions :execrows
DELETE FROM sandbox_sessions WHERE user_id = :user_id AND expires_at <= now();

-- name: proxy_session_access :one
-- A live subdomain session for this sandbox, with the member's CURRENT role and the sandbox row:
-- no row when the session (or the main session it came from) expired, belongs to another
-- sandbox, or the membership ended.
SELECT ss.user_id, m.role, ss.session_hash,
       s.id, s.workspace_id, s.name, s.type, s.status, s.status_reason, s.created_by,
       s.created_at, s.updated_at, s.last_activity_at, s.paused_at, s.agent_secret,
       s.endpoint_host, s.endpoint_port, s.backend_ref, s.last_heartbeat_at, s.private,
       s.paused_reason, s.paused_by, s.paused_idle_seconds, pu.username AS paused_by_name
FROM sandbox_sessions ss
JOIN sandboxes s ON s.id = ss.sandbox_id
JOIN workspace_members m ON m.workspace_id = s.workspace_id AND m.user_id = ss.user_id
JOIN sessions ms ON ms.token_hash = ss.session_hash AND ms.expires_at > now()
LEFT JOIN users pu ON pu.id = s.paused_by
WHERE ss.token_hash = :token_hash AND ss.sandbox_id = :sandbox_id AND ss.expires_at > now();
