-- name: llm_caller_by_token :one
-- The sandbox a proxy token belongs to (only its hash is stored), with its workspace's overrides.
SELECT s.id AS sandbox_id, s.workspace_id, s.created_by, s.name, s.status,
       q.rpm AS rpm_override, q.tokens_per_day AS tokens_per_day_override
FROM sandboxes s LEFT JOIN llm_quotas q ON q.workspace_id = s.workspace_id
WHERE s.proxy_token_hash = :token_hash;

-- name: llm_workspace_load :one
-- How much the workspace used in the last minute and today (UTC), as the replica `replica_id`
-- must count it: rows written so far (a row still in flight, status NULL, counts its reservation
-- for an hour at most, so a lost one cannot block the workspace for the rest of the day), plus
-- what the other replicas' calls in flight hold (their published sums, a minute old at most).
SELECT m.requests + o.requests AS recent_requests,
       coalesce(ceil(extract(epoch FROM m.oldest + interval '60 seconds' - now())), 0)::int
           AS window_frees_in,
       d.tokens + o.tokens AS tokens_today,
       ceil(extract(epoch FROM (date_trunc('day', now() AT TIME ZONE 'UTC') + interval '1 day')
                               AT TIME ZONE 'UTC' - now()))::int AS day_ends_in
FROM (SELECT count(*) AS requests, min(created_at) AS oldest FROM llm_usage
      WHERE workspace_id = :workspace_id AND created_at > now() - interval '60 seconds') m
CROSS JOIN (SELECT coalesce(sum(input_tokens + output_tokens + cache_creation_input_tokens
                                + cache_read_input_tokens
                                + CASE WHEN status IS NULL AND created_at > now() - interval '1 hour'
                                       THEN reserved_tokens ELSE 0 END), 0)::bigint AS tokens
            FROM llm_usage
            WHERE workspace_id = :workspace_id
              AND created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') d
CROSS JOIN (SELECT coalesce(sum(tokens), 0)::bigint AS tokens,
                   coalesce(sum(requests), 0)::bigint AS requests
            FROM llm_inflight
            WHERE workspace_id = :workspace_id AND replica_id <> :replica_id
              AND updated_at > now() - interval '60 seconds') o;

-- name: llm_usage_record :exec
-- One finished call, written after the fact in a batch: a sandbox or user deleted meanwhile is
-- recorded as NULL (as the foreign keys' ON DELETE SET NULL would have), a workspace deleted
-- meanwhile takes the row with it (as its ON DELETE CASCADE would have).
INSERT INTO llm_usage (sandbox_id, workspace_id, user_id, sandbox_name, method, endpoint, model,
                       status, streaming, duration_ms, input_tokens, output_tokens,
                       cache_creation_input_tokens, cache_read_input_tokens, created_at)
SELECT (SELECT id FROM sandboxes WHERE id = :sandbox_id), w.id,
       (SELECT id FROM users WHERE id = :user_id), :sandbox_name, :method, :endpoint, :model,
       :status, :streaming, :duration_ms, :input_tokens, :output_tokens,
       :cache_creation_input_tokens, :cache_read_input_tokens, :created_at
FROM workspaces w WHERE w.id = :workspace_id;

-- name: llm_inflight_put :exec
INSERT INTO llm_inflight (replica_id, workspace_id, tokens, requests, updated_at)
SELECT :replica_id, w.id, :tokens, :requests, now() FROM workspaces w WHERE w.id = :workspace_id
ON CONFLICT (workspace_id, replica_id) DO UPDATE
SET tokens = excluded.tokens, requests = excluded.requests, updated_at = now();

-- name: llm_inflight_clear :exec
DELETE FROM llm_inflight WHERE replica_id = :replica_id AND workspace_id = :workspace_id;

-- name: llm_usage_by_day :many
SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day,
       count(*) AS requests, count(*) FILTER (WHERE status >= 400) AS errors,
       coalesce(sum(input_tokens), 0)::bigint AS input_tokens,
       coalesce(sum(output_tokens), 0)::bigint AS output_tokens,
       coalesce(sum(cache_creation_input_tokens), 0)::bigint AS cache_creation_input_tokens,
       coalesce(sum(cache_read_input_tokens), 0)::bigint AS cache_read_input_tokens
FROM llm_usage
WHERE workspace_id = :workspace_id AND created_at >= :since AND created_at < :until
GROUP BY 1 ORDER BY 1;

-- name: llm_usage_by_sandbox :many
SELECT u.sandbox_id, u.sandbox_name,
       count(*) AS requests, count(*) FILTER (WHERE u.status >= 400) AS errors,
       coalesce(sum(u.input_tokens), 0)::bigint AS input_tokens,
       coalesce(sum(u.output_tokens), 0)::bigint AS output_tokens,
       coalesce(sum(u.cache_creation_input_tokens), 0)::bigint AS cache_creation_input_tokens,
       coalesce(sum(u.cache_read_input_tokens), 0)::bigint AS cache_read_input_tokens
FROM llm_usage u
WHERE u.workspace_id = :workspace_id AND u.created_at >= :since AND u.created_at < :until
GROUP BY u.sandbox_id, u.sandbox_name ORDER BY u.sandbox_name, u.sandbox_id;

-- name: llm_usage_by_model :many
SELECT coalesce(model, '') AS model,
       count(*) AS requests, count(*) FILTER (WHERE status >= 400) AS errors,
       coalesce(sum(input_tokens), 0)::bigint AS input_tokens,
       coalesce(sum(output_tokens), 0)::bigint AS output_tokens,
       coalesce(sum(cache_creation_input_tokens), 0)::bigint AS cache_creation_input_tokens,
       coalesce(sum(cache_read_input_tokens), 0)::bigint AS cache_read_input_tokens
FROM llm_usage
WHERE workspace_id = :workspace_id AND created_at >= :since AND created_at < :until
GROUP BY 1 ORDER BY 1;

-- name: llm_get_quota :one
SELECT workspace_id, rpm, tokens_per_day, updated_at FROM llm_quotas WHERE workspace_id = :workspace_id;

-- name: llm_put_quota :exec
INSERT INTO llm_quotas (workspace_id, rpm, tokens_per_day, updated_at)
VALUES (:workspace_id, :rpm, :tokens_per_day, now())
ON CONFLICT (workspace_id) DO UPDATE
SET rpm = excluded.rpm, tokens_per_day = excluded.tokens_per_day, updated_at = now();

-- name: llm_delete_quota :execrows
DELETE FROM llm_quotas WHERE workspace_id = :workspace_id;

-- name: llm_refusal_add :exec
-- Adds `count` refused calls to the sandbox's row for this reason and hour.
INSERT INTO llm_refusals (workspace_id, sandbox_id, sandbox_name, reason, bucket, count, last_at,
                          last_model)
VALUES (:workspace_id, :sandbox_id, :sandbox_name, :reason, date_trunc('hour', now()), :count, now(),
        :model)
ON CONFLICT (workspace_id, sandbox_id, reason, bucket) DO UPDATE
SET count = llm_refusals.count + excluded.count, last_at = excluded.last_at,
    sandbox_name = excluded.sandbox_name,
    last_model = coalesce(excluded.last_model, llm_refusals.last_model);

-- name: llm_refusals_by_sandbox :many
-- Refused calls in the period (whole hours), per sandbox and reason.
SELECT r.sandbox_id, max(r.sandbox_name) AS sandbox_name, r.reason,
       sum(r.count)::bigint AS count, max(r.last_at) AS last_at
FROM llm_refusals r
WHERE r.workspace_id = :workspace_id
  AND r.bucket >= date_trunc('hour', CAST(:since AS timestamptz)) AND r.bucket < :until
GROUP BY r.sandbox_id, r.reason ORDER BY max(r.sandbox_name), r.sandbox_id, r.reason;
