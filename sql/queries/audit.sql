-- name: audit_insert :exec
-- A batch of entries in one statement: each parameter is one column, as an array.
INSERT INTO audit_log (at, actor_kind, actor_id, actor_name, actor_user_id, action, target_kind,
                       target_id, target_name, workspace_id, client_address, result, reason,
                       details)
SELECT * FROM unnest(:at::timestamptz[], :actor_kind::text[], :actor_id::text[],
                     :actor_name::text[], :actor_user_id::text[], :action::text[],
                     :target_kind::text[], :target_id::text[], :target_name::text[],
                     :workspace_id::text[], :client_address::text[], :result::text[],
                     :reason::text[], :details::jsonb[]);

-- name: audit_page :many
-- Newest first, one page after the cursor (`before`: the last id of the previous page).
-- `action` is a dotted name or its prefix (`sandbox.`); `actor` an id, a token's user or a name.
SELECT id, at, actor_kind, actor_id, actor_name, actor_user_id, action, target_kind, target_id,
       target_name, workspace_id, client_address, result, reason, details::text AS details
FROM audit_log
WHERE (:workspace_id::text IS NULL OR workspace_id = :workspace_id::text)
  AND (:action::text IS NULL OR starts_with(action, :action::text))
  AND (:actor::text IS NULL OR actor_id = :actor::text OR actor_user_id = :actor::text
       OR lower(actor_name) = lower(:actor::text))
  AND (:since::timestamptz IS NULL OR at >= :since::timestamptz)
  AND (:until::timestamptz IS NULL OR at < :until::timestamptz)
  AND (:before::bigint IS NULL OR id < :before::bigint)
ORDER BY id DESC
LIMIT :limit;

-- name: audit_export_page :many
-- Oldest first, after the cursor (`after`), for the JSON-lines export; the same filters.
SELECT id, at, actor_kind, actor_id, actor_name, actor_user_id, action, target_kind, target_id,
       target_name, workspace_id, client_address, result, reason, details::text AS details
FROM audit_log
WHERE (:workspace_id::text IS NULL OR workspace_id = :workspace_id::text)
  AND (:action::text IS NULL OR starts_with(action, :action::text))
  AND (:actor::text IS NULL OR actor_id = :actor::text OR actor_user_id = :actor::text
       OR lower(actor_name) = lower(:actor::text))
  AND (:since::timestamptz IS NULL OR at >= :since::timestamptz)
  AND (:until::timestamptz IS NULL OR at < :until::timestamptz)
  AND id > :after::bigint
ORDER BY id
LIMIT :limit;

-- name: audit_prune :execrows
-- Retention: entries older than `days` whole days go (the table's trigger refuses younger ones).
DELETE FROM audit_log WHERE at < now() - make_interval(days => :days::int);
