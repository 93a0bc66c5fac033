-- Several replicas (issue 16): each running server process keeps a row here, refreshed by its
-- heartbeat; one whose heartbeat is older than three intervals is dead. Times are the
-- database's own clock (now()), so replicas' clocks never need to agree.
CREATE TABLE replicas (
    id           TEXT PRIMARY KEY,
    -- Where other replicas reach this one's relay route (--relay-url).
    relay_url    TEXT NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Stopping (SIGTERM): finishing what it serves, taking nothing new.
    draining     BOOLEAN NOT NULL DEFAULT false
);

-- Secrets every replica must share, made once by whichever replica needs one first (the relay
-- credential's secret unless --relay-secret is given; the key sealing sandboxes' environment).
CREATE TABLE cluster_secrets (
    name       TEXT PRIMARY KEY,
    value      BYTEA NOT NULL CHECK (length(value) >= 32),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
