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
SELECT count(*) FROM users WHERE role = 'admin';

-- name: lock_users :exec
-- Serialises registrations (exactly one first user becomes the admin) and admin role changes.
LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE;
