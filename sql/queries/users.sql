-- name: create_user :one
-- :email_verified only when a sign-in provider vouched for the address (never for a typed one).
INSERT INTO users (username, email, email_verified, password_hash, role)
VALUES (:username, :email, :email_verified, :password_hash,
        CASE WHEN EXISTS (SELECT 1 FROM users) THEN 'user' ELSE 'admin' END)
RETURNING id, username, email, role, created_at;

-- name: get_user :one
SELECT id, username, email, role, created_at FROM users WHERE id = :id;

-- name: get_user_by_username :one
SELECT id, username, email, role, created_at FROM users WHERE lower(username) = lower(:username);

-- name: get_user_by_login :one
SELECT id, username, email, role, created_at FROM users
WHERE lower(username) = lower(:login) OR lower(email) = lower(:login)
ORDER BY (lower(username) = lower(:login)) DESC
LIMIT 1;

-- name: get_password_hash :scalar
SELECT password_hash FROM users WHERE id = :id;

-- name: set_password_hash :exec
UPDATE users SET password_hash = :password_hash, updated_at = now() WHERE id = :id;

-- name: count_users :scalar
SELECT count(*) FROM users;

-- name: list_users :many
SELECT id, username, email, role, created_at FROM users ORDER BY created_at;

-- name: set_user_role :execrows
UPDATE users SET role = :role, updated_at = now() WHERE id = :id;

-- name: get_user_role :scalar
SELECT role FROM users WHERE id = :id;

-- name: count_admins :scalar
-- Admins who can act: a disabled admin does not count.
SELECT count(*) FROM users WHERE role = 'admin' AND disabled_at IS NULL;

-- name: admin_list_users :many
SELECT id, username, email, role, created_at, disabled_at FROM users ORDER BY created_at, id;

-- name: admin_get_user :one
SELECT id, username, email, role, created_at, disabled_at FROM users WHERE id = :id;

-- name: set_user_disabled :execrows
-- Disable (:disabled true) or enable again; a no-op on a user already in that state.
UPDATE users SET disabled_at = CASE WHEN :disabled THEN coalesce(disabled_at, now()) END,
                 updated_at = now()
WHERE id = :id;

-- name: admin_list_sandboxes :many
-- Every sandbox on the server with its workspace's name and its creator's username.
SELECT s.id, s.name, s.type, s.status, s.status_reason, s.workspace_id, w.name AS workspace_name,
       s.created_by, u.username AS creator, s.created_at, s.last_activity_at
FROM sandboxes s JOIN workspaces w ON w.id = s.workspace_id
LEFT JOIN users u ON u.id = s.created_by
ORDER BY s.created_at, s.id;

-- name: lock_users :exec
-- Serialises registrations (exactly one first user becomes the admin) and admin role changes.
LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE;
