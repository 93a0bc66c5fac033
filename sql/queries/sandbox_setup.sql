-- What a sandbox was created with (migration 0014): its environment and its git repository.

-- name: sbx_setup_insert :exec
INSERT INTO sandbox_setup (sandbox_id, env_names, env_sealed, git_url, git_ref)
VALUES (:sandbox_id, :env_names, :env_sealed, :git_url, :git_ref);

-- name: sbx_setup_get :one
SELECT env_names, env_sealed, git_url, git_ref FROM sandbox_setup WHERE sandbox_id = :sandbox_id;
