-- Workspace events across replicas (migration 0023, sandboxes/event_relay.py).

-- name: event_announce :exec
-- An event with no row of its own to trigger it (a sandbox's previews): to every replica's
-- listener, once this transaction commits. Payload: ids only.
SELECT pg_notify('workspace_event', CAST(:payload AS TEXT));

-- name: preview_serving_set :scalar
-- Record the ports a running sandbox serves, as a preview watcher saw them; true only when that
-- changed what was recorded (a sandbox first seen serving nothing changes nothing), so of the
-- replicas that see the same change one writes it and announces it. A watcher that comes second
-- waits for the first's row lock, then finds nothing to change.
WITH before AS (
    SELECT ports FROM preview_serving WHERE sandbox_id = :sandbox_id
), written AS (
    INSERT INTO preview_serving (sandbox_id, ports) VALUES (:sandbox_id, CAST(:ports AS INTEGER[]))
    ON CONFLICT (sandbox_id) DO UPDATE SET ports = EXCLUDED.ports, changed_at = now()
    WHERE preview_serving.ports IS DISTINCT FROM EXCLUDED.ports
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM written)
   AND COALESCE((SELECT ports FROM before), '{}') IS DISTINCT FROM CAST(:ports AS INTEGER[]);
