-- Personal API tokens (`Authorization: Bearer ast_…`), stored as SHA-256 hashes only; the
-- command line's browser-approved sign-ins; and one-time links that open a sandbox from it.
CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY DEFAULT gen_random_uuid()::text,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    scope        TEXT NOT NULL CHECK (scope IN ('read', 'full')),
    -- NULL: every workspace of the owner; else only this one (gone with it).
    workspace_id TEXT REFERENCES workspaces(id) ON DELETE CASCADE,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ,
    expires_at   TIMESTAMPTZ NOT NULL,
    revoked_at   TIMESTAMPTZ
);
CREATE INDEX api_tokens_user_idx ON api_tokens (user_id, created_at);

-- `agentserver login` without --token: the command holds `request_hash`'s secret and polls;
-- the person approves `code_hash`'s code in a signed-in browser; the poll that finds it
-- approved deletes the row and mints the token (so no token is ever stored as is).
CREATE TABLE cli_logins (
    request_hash  TEXT PRIMARY KEY,
    code_hash     TEXT NOT NULL UNIQUE,
    token_name    TEXT NOT NULL,
    scope         TEXT NOT NULL CHECK (scope IN ('read', 'full')),
    workspace_id  TEXT REFERENCES workspaces(id) ON DELETE CASCADE,
    lifetime_secs DOUBLE PRECISION NOT NULL,
    user_id       TEXT REFERENCES users(id) ON DELETE CASCADE,  -- set on approval
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX cli_logins_expires_idx ON cli_logins (expires_at);

-- `agentserver sandboxes open`: a link that works once, in a browser signed in as its user.
CREATE TABLE sandbox_launches (
    token_hash TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    expires_at TIMESTAMPTZ NOT NULL
);
