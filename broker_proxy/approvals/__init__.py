"""Approval per request: requests that would carry a secret marked ``approval: per_request``
are held until a person allows or denies them (desk.py), bound to a digest of exactly the
request that was shown (digest.py), announced to a webhook (webhook.py) and decided over the
admin API (admin_routes.py) or the CLI.
"""
