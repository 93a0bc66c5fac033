-- name: oidc_create_login_state :exec
INSERT INTO oidc_login_states (state_hash, provider, browser_hash, expires_at)
VALUES (:state_hash, :provider, :browser_hash, now() + make_interval(secs => :lifetime));

-- name: oidc_take_login_state :one
-- Used once: a replayed callback finds nothing.
DELETE FROM oidc_login_states
WHERE state_hash = :state_hash AND expires_at > now()
RETURNING provider, browser_hash;

-- name: oidc_delete_expired_login_states :execrows
DELETE FROM oidc_login_states WHERE expires_at <= now();

-- name: oidc_get_identity_user :scalar
SELECT user_id FROM oidc_identities WHERE provider = :provider AND subject = :subject;

-- name: oidc_touch_identity :exec
UPDATE oidc_identities SET email = :email, last_login_at = now()
WHERE provider = :provider AND subject = :subject;

-- name: oidc_create_identity :exec
INSERT INTO oidc_identities (provider, subject, user_id, email)
VALUES (:provider, :subject, :user_id, :email);

-- name: oidc_get_user_by_email :one
SELECT id, username, email, role, created_at FROM users WHERE lower(email) = lower(:email);

-- name: oidc_email_verified :scalar
SELECT email_verified FROM users WHERE id = :id;
