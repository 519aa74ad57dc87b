"""The web console at /ui/ on the admin listener: static pages that are clients of the admin
API, signed in with a session cookie instead of the bearer token (sessions.py, routes.py), plus
the read-only views the API needed for them (audit_index.py, views.py)."""
