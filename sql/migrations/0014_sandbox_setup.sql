-- What a sandbox is given when it is created: environment variables for its agent (the values
-- sealed with the server's key, sandboxes/setup.py; only the names in clear) and a git
-- repository cloned onto the workspace disk on its first start.
CREATE TABLE sandbox_setup (
    sandbox_id TEXT PRIMARY KEY REFERENCES sandboxes(id) ON DELETE CASCADE,
    env_names  TEXT[] NOT NULL DEFAULT '{}',
    env_sealed BYTEA,
    git_url    TEXT,
    git_ref    TEXT
);
