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

-- name: delete_user_sessions :execrows
-- Sign out everywhere: every main session of the user, and with them (ON DELETE CASCADE)
-- every sandbox-host session and ticket they opened.
DELETE FROM sessions WHERE user_id = :user_id;

-- name: delete_other_sessions :execrows
-- A password change: every session of the user but the one that changed it.
DELETE FROM sessions WHERE user_id = :user_id AND token_hash <> :keep_hash;
