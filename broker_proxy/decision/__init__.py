"""What a request may do: authenticate the grant, match the policy, find and swap placeholders.

Imports the request, policy, grants, secrets, audit, approvals, scrubbing and signing packages;
never mitmproxy, the addons, the CLI, runtime or devtools.
"""
