"""Which model an LLM request asks for, and whether the secret's ``models`` allow it.

The model is read where the vendors put it: the JSON body's ``model`` (OpenAI Chat Completions,
Responses, Embeddings; Anthropic Messages), the path for Gemini
(``/v1beta/models/NAME:generateContent``, also Vertex's ``.../publishers/google/models/NAME:...``)
for Azure OpenAI (``/openai/deployments/NAME/...``) and for Amazon Bedrock on
``bedrock-runtime.REGION.amazonaws.com`` (``/model/ID/invoke``, ``/invoke-with-response-stream``,
``/converse``, ``/converse-stream``; the id percent-decoded, so ``%3A`` is ``:`` and an ARN's
``%2F`` is ``/``). Every model found must match one of the
secret's globs; nothing is rewritten or substituted, a request for another model is refused.

Fail closed where a reader could be fooled: a JSON body that names ``model`` twice (parsers
disagree on which one wins), or whose ``model`` is not a string, is refused too.
"""

from __future__ import annotations

import json
import re
from fnmatch import fnmatchcase
from urllib.parse import unquote

from broker_proxy.request.outbound import OutboundRequest

MODEL_NOT_ALLOWED = "model_not_allowed"  # 403: the request asks for a model the secret may not
_GEMINI = re.compile(r"/(?:models|tunedModels)/([^/:]+):[A-Za-z]+$")
_AZURE = re.compile(r"^/openai/deployments/([^/]+)(?:/|$)")
_BEDROCK_HOST = re.compile(r"^bedrock-runtime(-fips)?\.[a-z0-9-]+\.amazonaws\.com$")
_BEDROCK = re.compile(r"^/model/([^/]+)/[A-Za-z-]+$")
# A body is only parsed when it could be a JSON object naming a model: cheap to rule out.
_MODEL_KEY = b'"model"'


class UnreadableModel(ValueError):
    """The request names a model in a way that cannot be checked with confidence."""


def requested_models(request: OutboundRequest) -> list[str]:
    """Every model name the request asks for (none for e.g. GET /v1/models)."""
    found = [unquote(m.group(1)) for m in (_GEMINI.search(request.path),
                                           _AZURE.match(request.path)) if m]
    if _BEDROCK_HOST.match(request.host) and request.path.startswith("/model/"):
        found.append(bedrock_model(request.path))
    if request.body and _MODEL_KEY in request.body:
        found += _body_models(request.body)
    return found


def bedrock_model(path: str) -> str:
    """The model id of a Bedrock runtime path ``/model/ID/ACTION[?query]``, percent-decoded.

    A path under /model/ that does not have that shape (an ARN's slash left unencoded, a
    segment more) is unreadable rather than read as no model: fail closed.
    """
    found = _BEDROCK.match(path.split("?", 1)[0])
    if not found:
        raise UnreadableModel("the Bedrock path does not have the shape /model/ID/ACTION")
    return unquote(found.group(1))


def _body_models(body: bytes) -> list[str]:
    names: list[object] = []

    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        keys = [key for key, _ in items]
        if keys.count("model") > 1:
            raise UnreadableModel('the body names "model" more than once')
        return dict(items)

    try:
        document = json.loads(body, object_pairs_hook=pairs)
    except UnreadableModel:
        raise
    except (ValueError, RecursionError):
        return []  # not JSON: no vendor reads a model from it either
    if isinstance(document, dict) and "model" in document:
        names.append(document["model"])
    if not all(isinstance(name, str) for name in names):
        raise UnreadableModel('the body\'s "model" is not a string')
    return [str(name) for name in names]


def model_problem(request: OutboundRequest, allowed: tuple[str, ...], secret: str) -> str | None:
    """Why the request may not carry ``secret`` for the model it asks for, or None."""
    try:
        models = requested_models(request)
    except UnreadableModel as error:
        return f'secret "{secret}" is limited to some models and {error}'
    for model in models:
        if not any(fnmatchcase(model, pattern) for pattern in allowed):
            shown = json.dumps(model[:100])
            return f'secret "{secret}" may not be used for model {shown}'
    return None
