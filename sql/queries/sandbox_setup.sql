-- What a sandbox was created with (migration 0014): its environment and its git repository.

-- name: sbx_setup_insert :exec
INSERT INTO sandbox_setup (sandbox_id, env_names, env_sealed, git_url, git_ref)
VALUES (:sandbox_id, :env_names, :env_sealed, :git_url, :git_ref);

-- name: sbx_setup_get :one
SELECT env_names, env_sealed, git_url, git_ref FROM sandbox_setup WHERE sandbox_id = :sandbox_id;

-- name: sbx_setup_sealed :many
-- Every sandbox's sealed variables (to seal them again with another key, sandboxes/env_key.py).
SELECT sandbox_id, env_sealed FROM sandbox_setup WHERE env_sealed IS NOT NULL;

-- name: sbx_setup_reseal :execrows
-- The variables sealed again, unless they changed meanwhile.
UPDATE sandbox_setup SET env_sealed = :new WHERE sandbox_id = :sandbox_id AND env_sealed = :old;
