"""What comes back: every secret a grant holds, found in any encoding and replaced in answers.

Handed values: imports the request, policy, grants and secrets packages; never the decision,
mitmproxy, the addons, the CLI, runtime or devtools.
"""
