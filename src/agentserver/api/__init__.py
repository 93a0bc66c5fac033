"""The JSON API: one blueprint per resource, shared conventions in common.py and app.py."""
