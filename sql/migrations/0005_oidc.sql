-- Sign-in with GitHub and OpenID Connect providers.

-- One row per external identity, keyed by who vouches for it (the OIDC issuer, or the GitHub
-- OAuth base URL) and that provider's stable subject id. The email is informational: a
-- returning identity signs in as its user whatever its email says now.
CREATE TABLE oidc_identities (
    provider      TEXT NOT NULL,
    subject       TEXT NOT NULL,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    email         TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_login_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, subject)
);
CREATE INDEX oidc_identities_user_id_idx ON oidc_identities (user_id);

-- Sign-ins in progress: one row per `state`, used once. Only hashes are kept: the state's, and
-- the browser secret's (the `agentserver_oauth` cookie) that binds the flow to one browser.
-- The PKCE verifier and nonce are derived from that secret, so nothing here can finish a flow.
CREATE TABLE oidc_login_states (
    state_hash   TEXT PRIMARY KEY,
    provider     TEXT NOT NULL,
    browser_hash TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX oidc_login_states_expires_at_idx ON oidc_login_states (expires_at);
