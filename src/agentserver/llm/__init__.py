"""The LLM proxy: sandboxes call Anthropic at /proxy/anthropic/* with their own token.

Kept import-free so the pure modules (rules, usage) load without trio; serve.py takes
`open_llm_proxy` (feature) and `llm_middleware` (middleware) from `llm.proxy`.
"""
