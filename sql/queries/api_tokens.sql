-- Personal API tokens, the command line's browser-approved sign-ins, and one-time sandbox links.

-- name: token_create :one
-- No row when the user is disabled (or gone): a disabled user gets no new tokens.
INSERT INTO api_tokens (user_id, name, token_hash, scope, workspace_id, expires_at)
SELECT u.id, :name, :token_hash, :scope, :workspace_id, now() + make_interval(secs => :lifetime)
FROM users u WHERE u.id = :user_id AND u.disabled_at IS NULL
RETURNING id, user_id, name, scope, workspace_id, created_at, last_used_at, expires_at,
          revoked_at, (SELECT username FROM users WHERE users.id = api_tokens.user_id) AS username;

-- name: token_authenticate :one
-- The token's owner and limits, whatever its state (the caller says why it is refused). Also
-- notes when it was last used, at most once a minute; `first_use` is true only for the request
-- that used it first.
WITH touched AS (
    UPDATE api_tokens t SET last_used_at = now()
    FROM api_tokens old
    WHERE old.id = t.id AND t.token_hash = :token_hash AND t.revoked_at IS NULL
      AND t.expires_at > now()
      AND (t.last_used_at IS NULL OR t.last_used_at < now() - make_interval(secs => 60))
    RETURNING old.last_used_at IS NULL AS first_use
)
SELECT t.id AS token_id, t.scope, t.workspace_id, t.expires_at,
       t.expires_at <= now() AS expired, t.revoked_at IS NOT NULL AS revoked,
       u.disabled_at IS NOT NULL AS disabled,
       COALESCE((SELECT first_use FROM touched), false) AS first_use,
       u.id, u.username, u.email, u.role, u.created_at
FROM api_tokens t JOIN users u ON u.id = t.user_id
WHERE t.token_hash = :token_hash;

-- name: tokens_of_user :many
-- A user's tokens, newest first (revoked and expired ones too: the list says so). Never the hash.
SELECT t.id, t.user_id, t.name, t.scope, t.workspace_id, t.created_at, t.last_used_at,
       t.expires_at, t.revoked_at, u.username
FROM api_tokens t JOIN users u ON u.id = t.user_id
WHERE t.user_id = :user_id ORDER BY t.created_at DESC, t.id;

-- name: tokens_all :many
-- Every token on the server, for admins, newest first.
SELECT t.id, t.user_id, t.name, t.scope, t.workspace_id, t.created_at, t.last_used_at,
       t.expires_at, t.revoked_at, u.username
FROM api_tokens t JOIN users u ON u.id = t.user_id
ORDER BY t.created_at DESC, t.id LIMIT 1000;

-- name: token_revoke :one
-- Revoke a token of `user_id` (any user's when `user_id` is NULL: an admin); revoking twice
-- changes nothing. No row: no such token (of theirs).
UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, now())
WHERE id = :id AND (CAST(:user_id AS TEXT) IS NULL OR user_id = :user_id)
RETURNING id, user_id, name, scope, workspace_id, created_at, last_used_at, expires_at,
          revoked_at, (SELECT username FROM users WHERE users.id = api_tokens.user_id) AS username;

-- name: cli_login_sweep :execrows
DELETE FROM cli_logins WHERE expires_at <= now();

-- name: cli_login_count :scalar
SELECT count(*) FROM cli_logins;

-- name: cli_login_create :exec
INSERT INTO cli_logins (request_hash, code_hash, token_name, scope, workspace_id,
                        lifetime_secs, expires_at)
VALUES (:request_hash, :code_hash, :token_name, :scope, :workspace_id, :lifetime,
        now() + make_interval(secs => :ttl));

-- name: cli_login_describe :one
-- What the approval page shows for a code still waiting for approval.
SELECT l.token_name, l.scope, l.workspace_id, w.name AS workspace_name, l.lifetime_secs,
       l.expires_at
FROM cli_logins l LEFT JOIN workspaces w ON w.id = l.workspace_id
WHERE l.code_hash = :code_hash AND l.user_id IS NULL AND l.expires_at > now();

-- name: cli_login_approve :execrows
UPDATE cli_logins SET user_id = :user_id
WHERE code_hash = :code_hash AND user_id IS NULL AND expires_at > now();

-- name: cli_login_deny :execrows
DELETE FROM cli_logins WHERE code_hash = :code_hash AND user_id IS NULL;

-- name: cli_login_take :one
-- Atomic: the first poll after approval takes the row (and mints the token); nobody else can.
DELETE FROM cli_logins
WHERE request_hash = :request_hash AND user_id IS NOT NULL AND expires_at > now()
RETURNING user_id, token_name, scope, workspace_id, lifetime_secs;

-- name: cli_login_waiting :scalar
SELECT count(*) FROM cli_logins WHERE request_hash = :request_hash AND expires_at > now();

-- name: launch_create :exec
INSERT INTO sandbox_launches (token_hash, sandbox_id, user_id, expires_at)
VALUES (:token_hash, :sandbox_id, :user_id, now() + make_interval(secs => :lifetime));

-- name: launch_sweep :execrows
DELETE FROM sandbox_launches WHERE expires_at <= now();

-- name: launch_spend :one
-- Atomic: a link is gone after the first attempt, whether or not it was still valid.
DELETE FROM sandbox_launches WHERE token_hash = :token_hash AND sandbox_id = :sandbox_id
RETURNING user_id, expires_at > now() AS valid;
