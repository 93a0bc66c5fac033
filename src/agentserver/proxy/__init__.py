"""The subdomain proxy: sandboxes served at `oc-{id}` / `claw-{id}` under the base domain.

Kept import-free so the pure modules (routing, headers) load without trio; serve.py takes
`open_pool` (the upstream pool) and `SubdomainProxy` (the front door) from `proxy.subdomain`.
"""
