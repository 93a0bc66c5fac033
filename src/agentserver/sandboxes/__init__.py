"""Sandboxes: their lifecycle, the idle watcher and the backends that run them."""
