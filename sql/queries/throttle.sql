-- Throttles every replica counts together (migration 0025, auth/throttle_table.py). Names start
-- with `throttle_`. `:at` is the time to count at: NULL (always, but in tests) is the
-- database's own clock, so replicas' clocks never need to agree.

-- name: throttle_ask :many
-- Where each key stands, in the order asked; the keys asked to be spent are counted too
-- (see the function in migration 0025). One round trip for a whole request's throttles.
SELECT recent, wait
FROM throttle_ask(:scopes::text[], :keys::bytea[], :windows::float8[], :limits::int[],
                  :spends::boolean[], :at::timestamptz);

-- name: throttle_fail :exec
-- One failure for each key (each given once), and a few expired rows pruned.
SELECT throttle_fail(:scopes::text[], :keys::bytea[], :windows::float8[],
                     :at::timestamptz);

-- name: throttle_clear :exec
-- Forget keys' failures (a correct password ends an account's pacing).
DELETE FROM throttle_hits
WHERE (scope, key_hash) IN (SELECT * FROM unnest(:scopes::text[], :keys::bytea[]));

-- name: throttle_turn :scalar
-- A paced account's next turn: seconds to wait for it, or NULL when the queue is full.
SELECT throttle_turn(:scope, :key_hash, :delay, :most_ahead, :at::timestamptz);
