"""The running proxy process: assembling a broker, services, reload, watchers, durability.

May import every core package; never mitmproxy, the addons, the CLI or devtools.
"""
