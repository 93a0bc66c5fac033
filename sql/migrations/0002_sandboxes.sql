-- Sandboxes, the one-time tickets that open them, and the per-subdomain sessions.
CREATE TABLE sandboxes (
    id                TEXT PRIMARY KEY,
    workspace_id      TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    name              TEXT NOT NULL,
    type              TEXT NOT NULL CHECK (type IN ('opencode', 'openclaw', 'local')),
    status            TEXT NOT NULL DEFAULT 'creating'
                      CHECK (status IN ('creating', 'running', 'pausing', 'paused', 'resuming', 'offline', 'failed')),
    status_reason     TEXT,
    created_by        TEXT REFERENCES users(id) ON DELETE SET NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_activity_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    paused_at         TIMESTAMPTZ,
    -- The agent's own password: the proxy must replay it, so it is kept as given (never returned).
    agent_secret      TEXT NOT NULL,
    proxy_token_hash  TEXT UNIQUE,
    tunnel_token_hash TEXT UNIQUE,
    endpoint_host     TEXT,
    endpoint_port     INTEGER,
    backend_ref       TEXT,
    last_heartbeat_at TIMESTAMPTZ
);
CREATE INDEX sandboxes_workspace_id_idx ON sandboxes (workspace_id);
CREATE INDEX sandboxes_status_idx ON sandboxes (status);

-- One-time tickets minted by /api/sandboxes/{id}/open, redeemed once on the subdomain.
CREATE TABLE sandbox_tickets (
    token_hash TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    expires_at TIMESTAMPTZ NOT NULL
);

-- Subdomain sessions: scoped to one sandbox and one user, revoked when membership changes.
CREATE TABLE sandbox_sessions (
    token_hash TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX sandbox_sessions_user_idx ON sandbox_sessions (user_id, sandbox_id);
