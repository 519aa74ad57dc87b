"""Re-signing kinds: a request the agent signed with a placeholder key, signed again for real.

Imports the policy, secrets and the decision's plain request values; never mitmproxy, the addons,
the CLI, runtime or devtools.
"""
