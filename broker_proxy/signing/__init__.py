"""Re-signing kinds: a request the agent signed with a placeholder key, signed again for real.

Imports the request, policy and secrets packages; never the decision (which hands its policy in
as a ``SigningPolicy``), mitmproxy, the addons, the CLI, runtime or devtools.
"""
