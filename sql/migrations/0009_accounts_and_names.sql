-- Accounts an admin can disable, sessions a user can list and end one by one, and names that
-- are unique where people look for them: a user's workspaces, a workspace's sandboxes.

-- A disabled user cannot sign in by any method, and their sessions no longer count.
ALTER TABLE users ADD COLUMN disabled_at TIMESTAMPTZ;

-- A session's public id names it in the API ("end this one"); it is not the token, nor derived
-- from it, so knowing it authenticates nobody. Where and when it was used, for the session list.
ALTER TABLE sessions
    ADD COLUMN public_id      TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    ADD COLUMN last_used_at   TIMESTAMPTZ,
    ADD COLUMN client_address TEXT,
    ADD COLUMN user_agent     TEXT;
UPDATE sessions SET last_used_at = created_at;
ALTER TABLE sessions ALTER COLUMN last_used_at SET DEFAULT now(),
                     ALTER COLUMN last_used_at SET NOT NULL;
CREATE UNIQUE INDEX sessions_public_id_key ON sessions (public_id);

-- Workspace names are unique per owner: the user who created the workspace (for rows from
-- before this migration, its earliest owner member).
ALTER TABLE workspaces ADD COLUMN created_by TEXT REFERENCES users(id) ON DELETE SET NULL;
UPDATE workspaces w SET created_by = (
    SELECT m.user_id FROM workspace_members m
    WHERE m.workspace_id = w.id AND m.role = 'owner'
    ORDER BY m.created_at, m.user_id LIMIT 1
);

-- Existing duplicates (same owner, or same workspace for sandboxes; names compared trimmed and
-- ignoring case) keep the oldest row's name; every later one is renamed with the first free
-- suffix " (2)", " (3)", … (cut so the name stays within the API's 100 characters), so this
-- migration never fails on a database that already has duplicates.
DO $$
DECLARE
    r RECORD;
    n INTEGER;
    candidate TEXT;
BEGIN
    FOR r IN
        SELECT id, name, created_by FROM (
            SELECT id, name, created_by,
                   row_number() OVER (PARTITION BY created_by, lower(btrim(name))
                                      ORDER BY created_at, id) AS k
            FROM workspaces WHERE created_by IS NOT NULL
        ) d WHERE k > 1 ORDER BY created_by, lower(btrim(name)), k
    LOOP
        n := 2;
        LOOP
            candidate := left(btrim(r.name), 100 - length(' (' || n || ')')) || ' (' || n || ')';
            EXIT WHEN NOT EXISTS (
                SELECT 1 FROM workspaces
                WHERE created_by = r.created_by AND lower(btrim(name)) = lower(candidate)
            );
            n := n + 1;
        END LOOP;
        UPDATE workspaces SET name = candidate, updated_at = now() WHERE id = r.id;
    END LOOP;

    FOR r IN
        SELECT id, name, workspace_id FROM (
            SELECT id, name, workspace_id,
                   row_number() OVER (PARTITION BY workspace_id, lower(btrim(name))
                                      ORDER BY created_at, id) AS k
            FROM sandboxes
        ) d WHERE k > 1 ORDER BY workspace_id, lower(btrim(name)), k
    LOOP
        n := 2;
        LOOP
            candidate := left(btrim(r.name), 100 - length(' (' || n || ')')) || ' (' || n || ')';
            EXIT WHEN NOT EXISTS (
                SELECT 1 FROM sandboxes
                WHERE workspace_id = r.workspace_id AND lower(btrim(name)) = lower(candidate)
            );
            n := n + 1;
        END LOOP;
        UPDATE sandboxes SET name = candidate, updated_at = now() WHERE id = r.id;
    END LOOP;
END
$$;

CREATE UNIQUE INDEX workspaces_owner_name_key ON workspaces (created_by, lower(btrim(name)));
CREATE UNIQUE INDEX sandboxes_workspace_name_key ON sandboxes (workspace_id, lower(btrim(name)));
