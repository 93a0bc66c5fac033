-- A sandbox-host session belongs to the main session that opened it, so signing out (this
-- browser, everywhere, or by changing the password) ends it too: deleting the main session
-- cascades. A ticket also carries the hash of a nonce that the browser which asked for it holds
-- in a cookie on the sandbox host, so nobody can hand a victim a ticket minted for themselves
-- (see auth/tickets.py). Rows from before this migration belong to no main session: they go,
-- and a browser that used one simply opens the sandbox again.
DELETE FROM sandbox_tickets;
DELETE FROM sandbox_sessions;

ALTER TABLE sandbox_tickets
    ADD COLUMN session_hash TEXT NOT NULL REFERENCES sessions(token_hash) ON DELETE CASCADE,
    ADD COLUMN binding_hash TEXT NOT NULL;
CREATE INDEX sandbox_tickets_session_idx ON sandbox_tickets (session_hash);

ALTER TABLE sandbox_sessions
    ADD COLUMN session_hash TEXT NOT NULL REFERENCES sessions(token_hash) ON DELETE CASCADE;
CREATE INDEX sandbox_sessions_session_idx ON sandbox_sessions (session_hash);
