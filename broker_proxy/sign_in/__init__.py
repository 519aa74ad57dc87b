"""Signing in through an OpenID provider: the flow, the mapping of claims to roles, who may act.

Above the policy (it reads the `sign_in` section) and the identity leaf (the roles it hands out).
"""
