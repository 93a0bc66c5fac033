-- name: create_workspace :one
-- `created_by` owns the name: a user's workspace names are unique (trimmed, ignoring case).
INSERT INTO workspaces (name, created_by) VALUES (:name, :created_by)
RETURNING id, name, created_at, updated_at, idle_timeout_seconds, members_manage_all;

-- name: list_workspaces_for_user :many
SELECT w.id, w.name, w.created_at, w.updated_at, m.role, w.idle_timeout_seconds,
       w.members_manage_all
FROM workspaces w JOIN workspace_members m ON m.workspace_id = w.id
WHERE m.user_id = :user_id
ORDER BY w.created_at, w.id;

-- name: get_workspace :one
SELECT id, name, created_at, updated_at, idle_timeout_seconds, members_manage_all
FROM workspaces WHERE id = :id;

-- name: workspace_name_owner :one
-- Whose names a workspace's name must not repeat: its creator (NULL once they are deleted).
SELECT w.created_by, u.username FROM workspaces w LEFT JOIN users u ON u.id = w.created_by
WHERE w.id = :id;

-- name: rename_workspace :execrows
UPDATE workspaces SET name = :name, updated_at = now() WHERE id = :id;

-- name: set_workspace_idle_timeout :execrows
-- NULL: follow the server's --idle-timeout.
UPDATE workspaces SET idle_timeout_seconds = :seconds, updated_at = now() WHERE id = :id;

-- name: set_workspace_members_manage_all :execrows
-- Whether members who may manage sandboxes may manage everyone's (migration 0011).
UPDATE workspaces SET members_manage_all = :members_manage_all, updated_at = now() WHERE id = :id;

-- name: delete_workspace :execrows
DELETE FROM workspaces WHERE id = :id;

-- name: list_all_workspaces :many
SELECT w.id, w.name, w.created_at, w.updated_at,
       (SELECT count(*) FROM sandboxes s WHERE s.workspace_id = w.id) AS sandbox_count,
       (SELECT count(*) FROM workspace_members m WHERE m.workspace_id = w.id) AS member_count
FROM workspaces w ORDER BY w.created_at;
