-- name: add_member :exec
INSERT INTO workspace_members (workspace_id, user_id, role) VALUES (:workspace_id, :user_id, :role);

-- name: get_member_role :scalar
SELECT role FROM workspace_members WHERE workspace_id = :workspace_id AND user_id = :user_id;

-- name: get_member :one
SELECT m.workspace_id, m.user_id, u.username, u.email, m.role, m.created_at
FROM workspace_members m JOIN users u ON u.id = m.user_id
WHERE m.workspace_id = :workspace_id AND m.user_id = :user_id;

-- name: list_members :many
SELECT m.workspace_id, m.user_id, u.username, u.email, m.role, m.created_at
FROM workspace_members m JOIN users u ON u.id = m.user_id
WHERE m.workspace_id = :workspace_id
ORDER BY m.created_at, u.username;

-- name: lock_members :exec
-- Taken before changing roles so "the last owner stays" holds under concurrency.
SELECT 1 FROM workspace_members WHERE workspace_id = :workspace_id FOR UPDATE;

-- name: count_owners :scalar
SELECT count(*) FROM workspace_members WHERE workspace_id = :workspace_id AND role = 'owner';

-- name: set_member_role :execrows
UPDATE workspace_members SET role = :role WHERE workspace_id = :workspace_id AND user_id = :user_id;

-- name: remove_member :execrows
DELETE FROM workspace_members WHERE workspace_id = :workspace_id AND user_id = :user_id;

-- name: revoke_sandbox_sessions_for_member :execrows
-- A role change or removal ends the member's open subdomain sessions in that workspace.
DELETE FROM sandbox_sessions ss USING sandboxes s
WHERE ss.sandbox_id = s.id AND s.workspace_id = :workspace_id AND ss.user_id = :user_id;
