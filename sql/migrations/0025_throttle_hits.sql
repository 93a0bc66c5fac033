-- Throttles counted by every replica together (issue 16): failed sign-ins per client address,
-- failures per account (auth/pacing.py), password work per address, registration-code guesses.
-- One row per throttled key: the times of its failures still inside the throttle's window,
-- oldest first (a sliding window: the rule of auth/throttle.py's `MemoryCounts`), and for a
-- paced account the start of its latest turn. Times are the database's own clock. Keys are
-- stored as an HMAC (a typed login may be a password typed into the wrong box), never in clear.
CREATE TABLE throttle_hits (
    scope      TEXT NOT NULL,
    key_hash   BYTEA NOT NULL,
    hits       TIMESTAMPTZ[] NOT NULL DEFAULT '{}',
    -- A paced account's latest turn: the next one starts a delay after it, on any replica.
    turn_at    TIMESTAMPTZ,
    -- Nothing in the row counts after this (its newest failure left the window, its turn has
    -- passed): the row is pruned.
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (scope, key_hash)
);
CREATE INDEX throttle_hits_expiry ON throttle_hits (expires_at);

-- The failures of `hits` after `since`, oldest first. At most the newest 1000 are kept: a key
-- is refused long before that, so the bound only caps a row's size.
CREATE FUNCTION throttle_recent(hits TIMESTAMPTZ[], since TIMESTAMPTZ) RETURNS TIMESTAMPTZ[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(array_agg(h ORDER BY h), '{}') FROM (
        SELECT h FROM unnest(hits) AS h WHERE h > since ORDER BY h DESC LIMIT 1000
    ) AS newest
$$;

-- Up to 100 rows that no longer count at `moment` are deleted (by whoever records a hit: the
-- table holds about the keys counted within a window, and no sweep has to run anywhere).
CREATE FUNCTION throttle_prune(moment TIMESTAMPTZ) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM throttle_hits WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM throttle_hits WHERE expires_at < moment
        LIMIT 100 FOR UPDATE SKIP LOCKED
    ))
$$;

-- Where keys stand, in order: each one's failures in its window and the seconds until it may
-- try again (0: now). A key asked with `p_spends` true is counted too, under its row's lock (two
-- replicas cannot both take the last attempt), unless it or a key asked before it is refused (a
-- refused request counts nothing further, as when asked one by one); if one was, expired rows
-- are pruned. Times: `p_at`, or when NULL the clock once the row is locked (a wait for the
-- lock must not age the answer).
CREATE FUNCTION throttle_ask(
    p_scopes TEXT[], p_keys BYTEA[], p_windows FLOAT8[], p_limits INT[], p_spends BOOLEAN[],
    p_at TIMESTAMPTZ
) RETURNS TABLE (recent INT, wait FLOAT8)
LANGUAGE plpgsql AS $$
DECLARE
    refused BOOLEAN := false;
    counting BOOLEAN;
    counted BOOLEAN := false;
    stored TIMESTAMPTZ[];
    kept TIMESTAMPTZ[];
    moment TIMESTAMPTZ;
    since TIMESTAMPTZ;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(p_scopes), 0) LOOP
        counting := p_spends[i] AND NOT refused;
        IF counting THEN
            INSERT INTO throttle_hits (scope, key_hash, expires_at)
            VALUES (p_scopes[i], p_keys[i], coalesce(p_at, clock_timestamp()))
            ON CONFLICT DO NOTHING;
            SELECT t.hits INTO stored FROM throttle_hits AS t
            WHERE t.scope = p_scopes[i] AND t.key_hash = p_keys[i] FOR UPDATE;
        ELSE
            SELECT t.hits INTO stored FROM throttle_hits AS t
            WHERE t.scope = p_scopes[i] AND t.key_hash = p_keys[i];
        END IF;
        moment := coalesce(p_at, clock_timestamp());
        since := moment - make_interval(secs => p_windows[i]);
        kept := throttle_recent(coalesce(stored, '{}'), since);
        recent := cardinality(kept);
        wait := 0;
        IF recent >= p_limits[i] THEN
            -- Until the oldest failure still counted leaves the window.
            wait := extract(epoch FROM kept[1] + make_interval(secs => p_windows[i]) - moment);
            refused := true;
        ELSIF counting THEN
            counted := true;
            UPDATE throttle_hits AS t
            SET hits = kept || moment,
                expires_at = greatest(t.expires_at, moment + make_interval(secs => p_windows[i]))
            WHERE t.scope = p_scopes[i] AND t.key_hash = p_keys[i];
        END IF;
        RETURN NEXT;
    END LOOP;
    IF counted THEN
        PERFORM throttle_prune(moment);
    END IF;
END $$;

-- One failure of each key (keys given once each) at `p_at` or now; expired rows pruned.
CREATE FUNCTION throttle_fail(
    p_scopes TEXT[], p_keys BYTEA[], p_windows FLOAT8[], p_at TIMESTAMPTZ
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    moment TIMESTAMPTZ := coalesce(p_at, clock_timestamp());
BEGIN
    INSERT INTO throttle_hits AS t (scope, key_hash, hits, expires_at)
    SELECT f.scope, f.key_hash, ARRAY[moment], moment + make_interval(secs => f.secs)
    FROM unnest(p_scopes, p_keys, p_windows) AS f(scope, key_hash, secs)
    ORDER BY f.scope, f.key_hash  -- rows locked in one order: two batches never deadlock
    ON CONFLICT (scope, key_hash) DO UPDATE
    SET hits = throttle_recent(t.hits, moment - (EXCLUDED.expires_at - moment)) || moment,
        expires_at = greatest(t.expires_at, EXCLUDED.expires_at);
    PERFORM throttle_prune(moment);
END $$;

-- A paced account's next turn: `p_delay` after the latest turn, and at least `p_delay` from
-- now (`p_at`, or the clock once the row is locked); the seconds to wait for it, or NULL
-- (nothing taken) when it would start more than `p_most_ahead` seconds from now: the queue is
-- full.
CREATE FUNCTION throttle_turn(
    p_scope TEXT, p_key BYTEA, p_delay FLOAT8, p_most_ahead FLOAT8, p_at TIMESTAMPTZ
) RETURNS FLOAT8
LANGUAGE plpgsql AS $$
DECLARE
    delay INTERVAL := make_interval(secs => p_delay);
    latest TIMESTAMPTZ;
    moment TIMESTAMPTZ;
    turn TIMESTAMPTZ;
BEGIN
    INSERT INTO throttle_hits (scope, key_hash, expires_at)
    VALUES (p_scope, p_key, coalesce(p_at, clock_timestamp()))
    ON CONFLICT DO NOTHING;
    SELECT t.turn_at INTO latest FROM throttle_hits AS t
    WHERE t.scope = p_scope AND t.key_hash = p_key FOR UPDATE;
    moment := coalesce(p_at, clock_timestamp());
    turn := greatest(latest + delay, moment + delay);  -- greatest() skips a NULL (no turn yet)
    IF turn > moment + make_interval(secs => p_most_ahead) THEN
        RETURN NULL;
    END IF;
    UPDATE throttle_hits AS t SET turn_at = turn, expires_at = greatest(t.expires_at, turn)
    WHERE t.scope = p_scope AND t.key_hash = p_key;
    RETURN extract(epoch FROM turn - moment);
END $$;
