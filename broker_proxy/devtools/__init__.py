"""Tools for the demo, tests and benchmarks: an echo upstream, a throwaway PKI and Redis, a client.

Installed because `broker-proxy demo` uses them; may import anything in the core, but nothing in
runtime or the request path imports them.
"""
