"""Who the caller is and what they may do: passwords, tokens, sessions, the role matrix."""
