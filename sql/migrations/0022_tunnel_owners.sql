-- Tunnel ownership (issue 16): the replica that accepted a local agent's tunnel owns the
-- sandbox's traffic; every other replica relays its requests there. A newer tunnel for the same
-- sandbox, on any replica, takes the row over with a new generation (from one sequence, so a
-- generation is never reused, not even after the row was removed); the replica holding an older
-- one learns from the notice below (or its next heartbeat) that its tunnel is superseded and
-- closes it. A tunnel that ends removes the row only while the generation is still its own.
-- No foreign key to `replicas`: a replica's row may go before its owners' rows are swept.
CREATE SEQUENCE tunnel_generation;

CREATE TABLE tunnel_owners (
    sandbox_id TEXT PRIMARY KEY REFERENCES sandboxes(id) ON DELETE CASCADE,
    replica_id TEXT NOT NULL,
    generation BIGINT NOT NULL,
    claimed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX tunnel_owners_replica_idx ON tunnel_owners (replica_id);

-- Every change of ownership is announced in its transaction (payload: the sandbox id), so
-- replicas forget their cached owner and a superseded owner closes its tunnel at once.
CREATE FUNCTION agentserver_tunnel_owner_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM agentserver_announce('tunnel_owner_changed', NEW.sandbox_id);
    ELSE
        PERFORM agentserver_announce('tunnel_owner_changed', OLD.sandbox_id);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER tunnel_owners_changed AFTER INSERT OR UPDATE OR DELETE ON tunnel_owners
    FOR EACH ROW EXECUTE FUNCTION agentserver_tunnel_owner_changed();
