-- name: create_session :execrows
-- No row (0) when the user is disabled (or gone): a disabled user cannot sign in at all.
INSERT INTO sessions (token_hash, user_id, expires_at, client_address, user_agent)
SELECT :token_hash, u.id, now() + make_interval(secs => :lifetime), :client_address, :user_agent
FROM users u WHERE u.id = :user_id AND u.disabled_at IS NULL;

-- name: get_session_user :one
-- A live session of a user who is not disabled. Also notes when it was last used, at most once
-- a minute (the session list shows it; a write on every request would cost too much).
WITH touched AS (
    UPDATE sessions SET last_used_at = now()
    WHERE token_hash = :token_hash AND expires_at > now()
      AND last_used_at < now() - make_interval(secs => 60)
)
SELECT u.id, u.username, u.email, u.role, u.created_at
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE s.token_hash = :token_hash AND s.expires_at > now() AND u.disabled_at IS NULL;

-- name: list_user_sessions :many
-- A user's live sessions, newest use first; `current` marks the one asking. Never the token hash.
SELECT public_id, created_at, last_used_at, expires_at, client_address, user_agent,
       token_hash = :current_hash AS is_current
FROM sessions WHERE user_id = :user_id AND expires_at > now()
ORDER BY last_used_at DESC, created_at DESC;

-- name: delete_session_by_public_id :one
-- End one of the user's own sessions (and, ON DELETE CASCADE, its sandbox-host sessions).
DELETE FROM sessions WHERE user_id = :user_id AND public_id = :public_id
RETURNING token_hash;

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
