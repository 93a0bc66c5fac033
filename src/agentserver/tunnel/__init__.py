"""The agent tunnel: frame codec, sans-IO stream state machine, and the trio transport."""
