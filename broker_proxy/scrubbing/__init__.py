"""What comes back: every secret a grant holds, found in any encoding and replaced in answers.

Imports the policy, grants, secrets and signing packages; never mitmproxy, the addons, the CLI,
runtime or devtools.
"""
