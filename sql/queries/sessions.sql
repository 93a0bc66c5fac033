-- name: create_session :exec
INSERT INTO sessions (token_hash, user_id, expires_at)
VALUES (:token_hash, :user_id, now() + make_interval(secs => :lifetime));

-- name: get_session_user :one
SELECT u.id, u.username, u.email, u.role, u.created_at
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE s.token_hash = :token_hash AND s.expires_at > now();

-- name: delete_session :execrows
DELETE FROM sessions WHERE token_hash = :token_hash;

-- name: delete_expired_sessions :execrows
DELETE FROM sessions WHERE expires_at <= now();
