"""The command-line client (`agentserver login`, `workspaces`, `sandboxes`, `tokens`): it talks
only to the JSON API and imports nothing of the server."""
