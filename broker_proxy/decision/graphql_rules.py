"""GraphQL rules on a destination: which operation types, operation names and top-level fields a
request carrying a secret may ask for.

The document is parsed with graphql-core, the reference implementation's parser, so what is
checked is what a GraphQL server reads. Every operation of the document is checked, not only
the one ``operationName`` picks (a server that ignores it, or a cache that runs another, is no
way around the rule); top-level fields are read through fragment spreads and inline fragments,
by field name (an alias renames the answer, not the field). Read from:

* POST ``application/json``: ``{"query", "operationName", "extensions"}`` or a batched array
  of them; POST ``application/graphql``: the document itself;
* GET (and any other method): the ``query``, ``operationName`` and ``extensions`` parameters.

A persisted query (``extensions.persistedQuery.sha256Hash``, or ``id``/``documentId``/
``doc_id``) sent without a document is refused unless its id is listed under ``persisted``:
the proxy cannot know what it runs. Nothing here is rewritten.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from broker_proxy.policy.protocol_rules import GraphqlRules
from broker_proxy.request.outbound import OutboundRequest
from broker_proxy.strict_json import loads

# graphql-core is imported where a document is parsed, not here: importing it costs about 0.2 s
# of CPU, which every proxy start and every process that loads the broker would pay, most of
# them with no GraphQL rule at all.
if TYPE_CHECKING:
    from graphql.language import FragmentDefinitionNode, SelectionSetNode

GRAPHQL_INVALID_REQUEST = "graphql_invalid_request"  # 400: no GraphQL request the proxy can read
GRAPHQL_OPERATION_NOT_ALLOWED = "graphql_operation_not_allowed"  # 403

MAX_BODY = 1024 * 1024
MAX_TOKENS = 20_000  # graphql-core stops parsing past this many tokens
MAX_BATCH = 50
_UNKNOWN = "..."  # in place of the fields of a fragment the document does not define
_PERSISTED_KEYS = ("id", "documentId", "doc_id", "queryId")


@dataclass(frozen=True, slots=True)
class GraphqlRefusal:
    status: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class GraphqlOperation:
    """One operation of a request's document (for the checks and the audit record)."""

    kind: str  # query, mutation, subscription
    name: str  # "" when anonymous
    fields: tuple[str, ...]  # top-level field names, fragments spread


def _invalid(message: str) -> GraphqlRefusal:
    return GraphqlRefusal(400, GRAPHQL_INVALID_REQUEST, message)


def _shown(text: str) -> str:
    return json.dumps(text[:100])


def read_requests(request: OutboundRequest) -> list[dict[str, Any]] | GraphqlRefusal:
    """The GraphQL requests (query, operationName, extensions, ids) the HTTP request holds.

    The URL's parameters and the body are both read, whatever the method: some servers take
    ``?query=`` on a POST whose body has none, or a body on a method other than POST.
    """
    items: list[dict[str, Any]] = []
    if request.query:
        params = parse_qs(request.query, keep_blank_values=True)
        if any(len(values) > 1 for values in params.values()):
            return _invalid("a GraphQL parameter is given more than once")
        single: dict[str, Any] = {key: values[0] for key, values in params.items()}
        if "extensions" in single:
            try:
                single["extensions"] = loads(single["extensions"])
            except ValueError:
                return _invalid("the extensions parameter is not JSON")
        if {"query", "extensions", *_PERSISTED_KEYS} & single.keys() or not request.body:
            items.append(single)
    if not request.body:
        return items or [{}]
    if len(request.body) > MAX_BODY:
        return _invalid(f"a GraphQL request body over {MAX_BODY} bytes is not read")
    content_type = next((v for k, v in request.headers if k.lower() == "content-type"), "")
    if content_type.split(";", 1)[0].strip().lower() == "application/graphql":
        try:
            return [*items, {"query": request.body.decode("utf-8")}]
        except UnicodeDecodeError:
            return _invalid("the GraphQL document is not UTF-8")
    try:
        document = loads(request.body)
    except (ValueError, RecursionError) as error:
        return _invalid(f"the body is not a GraphQL request: {str(error)[:120]}")
    batch = document if isinstance(document, list) else [document]
    if not batch or len(batch) > MAX_BATCH:
        return _invalid(f"a GraphQL batch holds 1 to {MAX_BATCH} requests")
    if not all(isinstance(item, dict) for item in batch):
        return _invalid("a GraphQL request is a JSON object")
    return [*items, *batch]


def _persisted_id(item: dict[str, Any]) -> str | None:
    extensions = item.get("extensions")
    if isinstance(extensions, dict) and isinstance(extensions.get("persistedQuery"), dict):
        digest = extensions["persistedQuery"].get("sha256Hash")
        return digest if isinstance(digest, str) else ""
    for key in _PERSISTED_KEYS:
        if key in item:
            return item[key] if isinstance(item[key], str) else ""
    return None


def operations(query: str) -> list[GraphqlOperation] | GraphqlRefusal:
    """Every operation of a document, with its top-level fields; refuses non-executable ones."""
    from graphql import GraphQLError, parse
    from graphql.language import DocumentNode, FragmentDefinitionNode, OperationDefinitionNode

    try:
        document: DocumentNode = parse(query, no_location=True, max_tokens=MAX_TOKENS)
    except (GraphQLError, RecursionError) as error:
        return _invalid(f"the GraphQL document does not parse: {str(error)[:120]}")
    fragments: dict[str, FragmentDefinitionNode] = {}
    found_operations: list[OperationDefinitionNode] = []
    for definition in document.definitions:
        if isinstance(definition, FragmentDefinitionNode):
            if definition.name.value in fragments:
                return _invalid(f"fragment {_shown(definition.name.value)} is defined twice")
            fragments[definition.name.value] = definition
        elif isinstance(definition, OperationDefinitionNode):
            found_operations.append(definition)
        else:
            return _invalid("a GraphQL request holds operations and fragments only")
    if not found_operations:
        return _invalid("the GraphQL document holds no operation")
    found = []
    for operation in found_operations:
        names: list[str] = []
        _top_fields(operation.selection_set, fragments, names, set())
        if _UNKNOWN in names:
            return _invalid("the document spreads a fragment it does not define")
        found.append(GraphqlOperation(operation.operation.value,
                                      operation.name.value if operation.name else "",
                                      tuple(names)))
    return found


def _top_fields(selection_set: SelectionSetNode, fragments: dict[str, FragmentDefinitionNode],
                names: list[str], seen: set[str]) -> None:
    from graphql.language import FieldNode, FragmentSpreadNode, InlineFragmentNode

    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            names.append(selection.name.value)
        elif isinstance(selection, InlineFragmentNode):
            _top_fields(selection.selection_set, fragments, names, seen)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            if name in seen:
                continue  # a cycle (invalid GraphQL) or a repeat: nothing new at this level
            seen.add(name)
            if name in fragments:
                _top_fields(fragments[name].selection_set, fragments, names, seen)
            else:
                names.append(_UNKNOWN)  # a server refuses it too; so do we


def read_operations(request: OutboundRequest) -> list[GraphqlOperation] | GraphqlRefusal:
    """Every operation of every GraphQL request in ``request``, or why none can be read.

    Persisted queries without a document come back as an operation of kind "persisted" with
    the id as its name (the rules decide).
    """
    items = read_requests(request)
    if isinstance(items, GraphqlRefusal):
        return items
    found: list[GraphqlOperation] = []
    for item in items:
        query = item.get("query")
        if query is None or query == "":
            persisted = _persisted_id(item)
            if persisted is None:
                return _invalid("a GraphQL request names no query")
            found.append(GraphqlOperation("persisted", persisted, ()))
            continue
        if not isinstance(query, str):
            return _invalid("a GraphQL query is a string")
        listed = operations(query)
        if isinstance(listed, GraphqlRefusal):
            return listed
        chosen = item.get("operationName")
        if chosen is not None and (not isinstance(chosen, str)
                                   or chosen not in {op.name for op in listed}):
            return _invalid("operationName names no operation of the document")
        if chosen is None and len(listed) > 1:
            return _invalid("a document with several operations needs an operationName")
        found += listed
    return found


def graphql_problem(request: OutboundRequest, rules: GraphqlRules,
                    secret: str) -> GraphqlRefusal | None:
    """Why ``rules`` refuse this request, or None."""
    found = read_operations(request)
    if isinstance(found, GraphqlRefusal):
        return found
    for operation in found:
        if problem := operation_problem(operation, rules, secret):
            return problem
    return None


def operation_problem(operation: GraphqlOperation, rules: GraphqlRules,
                      secret: str) -> GraphqlRefusal | None:
    def refuse(what: str) -> GraphqlRefusal:
        return GraphqlRefusal(403, GRAPHQL_OPERATION_NOT_ALLOWED,
                              f'secret "{secret}" may not be used for {what}')

    if operation.kind == "persisted":
        if operation.name not in rules.persisted:
            return refuse(f"persisted GraphQL query {_shown(operation.name)} (not listed)")
        return None
    if operation.kind not in rules.operations:
        return refuse(f"a GraphQL {operation.kind}")
    if rules.names is not None and not rules.names.permits(operation.name):
        shown = _shown(operation.name) if operation.name else "(anonymous)"
        return refuse(f"GraphQL operation {shown}")
    if rules.fields is not None:
        for field in operation.fields:
            if not rules.fields.permits(field):
                return refuse(f"GraphQL {operation.kind} field {_shown(field)}")
    return None
