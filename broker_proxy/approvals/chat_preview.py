"""What a chat message shows of a held request: the same preview the console shows, as text.

The hold and the decision record the digest of the preview (`shown_digest`): an approver who
decides from Slack must have been shown that preview too, not only the method and the path. A
refund of 5 and one of 99,999 have the same path; the body is what a person judges. Rendered
from the preview dict (preview.py), which holds placeholders, never a secret value, and bounded
below Slack's 3,000 characters per text block (the console link shows the rest).
"""

from __future__ import annotations

from typing import Any, Final

MAX_SHOWN: Final = 2400  # of Slack's 3,000 per section, with room for the summary line
FENCE: Final = "```"


def escape(text: str) -> str:
    """Slack's mrkdwn: an agent's text must not become a link, a mention or a code fence."""
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace(FENCE, "`\u200b``"))


def preview_text(preview: dict[str, Any]) -> str:
    """The tools, query and body of a preview as mrkdwn lines; empty when it shows none."""
    parts: list[str] = []
    for tool in preview.get("tools") or ():
        parts.append(f"tool *{escape(str(tool.get('name') or tool.get('method')))}*")
        if tool.get("arguments"):
            parts.append(_block(str(tool["arguments"]), bool(tool.get("truncated"))))
    query = preview.get("query")
    if isinstance(query, dict) and query.get("text"):
        parts.append(f"query `{escape(str(query['text']))}`")
    parts.extend(_body(preview.get("body")))
    text = "\n".join(parts)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "\n… (cut: open the console)"


def _body(body: object) -> list[str]:
    if not isinstance(body, dict) or body.get("kind") in (None, "empty"):
        return []
    if body.get("text"):
        return [_block(str(body["text"]), bool(body.get("truncated")))]
    if body.get("fields"):
        lines = "\n".join(f"{key}={value}" for key, value in body["fields"])
        return [_block(lines, bool(body.get("truncated")))]
    return [f"body: {escape(str(body.get('kind')))}, {body.get('size')} bytes, "
            f"sha256 {str(body.get('sha256'))[:16]}…"]


def _block(text: str, truncated: bool) -> str:
    return f"{FENCE}{escape(text)}{' …' if truncated else ''}{FENCE}"
