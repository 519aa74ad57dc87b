"""Reading the AWS SigV4 fields of a policy: ``sign: aws-sigv4`` on a secret, ``aws:`` on its
destinations.

Kept apart from loader.py so the loader stays a walk over the file; the checker passed in is the
loader's, so every problem is reported in the same FILE:LINE:COL form.

A SigV4 secret's value is never placed in a request: the agent's SDK signs with a placeholder
key id and the proxy signs again. So its placeholder must look like an access key id (SDKs
check), it has no ``inject``, and every destination names the services and regions it may sign
for: a host pattern alone ("*.amazonaws.com") would let one key sign for every AWS service.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import yaml

from broker_proxy.policy.model import AwsScope, Destination

if TYPE_CHECKING:
    from broker_proxy.policy.checking import NodeChecker

SIGN_AWS_SIGV4 = "aws-sigv4"
SIGN_KINDS = (SIGN_AWS_SIGV4,)
AWS_SCOPE_FIELDS = ("services", "regions")
# AWS access key ids are 16 to 128 word characters; real ones are AKIA/ASIA + 16 of [A-Z2-7].
ACCESS_KEY_ID_PATTERN = r"^[A-Z0-9]{16,128}$"
SCOPE_PART_PATTERN = r"^[a-z0-9-]{1,64}$"
_ACCESS_KEY_ID = re.compile(ACCESS_KEY_ID_PATTERN)
_SCOPE_PART = re.compile(SCOPE_PART_PATTERN)
# Fields that give a secret another kind: a SigV4 key is none of these at the same time.
_OTHER_KINDS = ("inject", "basic", "placeholder_format", "oauth2", "client_cert")


def parse_sign(node: yaml.Node, path: str, checker: NodeChecker) -> str | None:
    return checker.choice(node, path, "signing scheme", SIGN_KINDS, "use aws-sigv4")


def parse_aws_scope(node: yaml.Node, path: str, checker: NodeChecker) -> AwsScope | None:
    """``aws: {services: [s3, sts], regions: [us-east-1]}``; both lists are required."""
    before = len(checker.issues)
    fields = checker.fields(node, path, "aws", node)
    if fields is None:
        return None
    found: dict[str, frozenset[str]] = {}
    for name in AWS_SCOPE_FIELDS:
        if name not in fields:
            continue
        listed = checker.strings(fields[name][1], f"{path}.{name}")
        if listed == []:
            checker.report(fields[name][1], f"{path}.{name}", f"must name at least one of the "
                                                              f"{name} this key may sign for")
        chosen = set()
        for item_path, item, value in listed or ():
            if _SCOPE_PART.fullmatch(value):
                chosen.add(value)
            else:
                checker.report(item, item_path, f'invalid AWS {name[:-1]} "{value[:64]}": use '
                                                'lower-case names such as "s3" or "us-east-1"')
        found[name] = frozenset(chosen)
    if len(checker.issues) > before:
        return None
    return AwsScope(services=found["services"], regions=found["regions"])


def check_sigv4_secret(fields: dict[str, tuple[yaml.Node, yaml.Node]], key: yaml.Node,
                       path: str, sign: str | None, destinations: list[Destination],
                       checker: NodeChecker) -> None:
    """The cross-field rules of a ``sign: aws-sigv4`` secret (and of ``aws:`` without it)."""
    where = fields.get("destinations", (key, key))[1]
    if sign is None:
        if any(d.aws is not None for d in destinations):
            checker.report(where, f"{path}.destinations",
                           'aws: is only used by a secret with "sign: aws-sigv4"')
        return
    for other in _OTHER_KINDS:
        if other in fields:
            checker.report(fields[other][0], f"{path}.{other}",
                           "a sign: aws-sigv4 secret is never placed in a request: remove "
                           f"{other}")
    if "placeholder" not in fields:
        checker.report(key, path, 'missing required field "placeholder" (sign: aws-sigv4 needs '
                                  "a placeholder access key id, e.g. AKIA + 16 of A-Z2-7)")
    else:
        node = fields["placeholder"][1]
        if isinstance(node, yaml.ScalarNode) and not _ACCESS_KEY_ID.fullmatch(str(node.value)):
            checker.report(node, f"{path}.placeholder", "must look like an AWS access key id: "
                                                        "16 to 128 of A-Z and 0-9")
    if any(d.aws is None for d in destinations):
        checker.report(where, f"{path}.destinations",
                       "every destination of a sign: aws-sigv4 secret needs aws: {services: "
                       "[...], regions: [...]}")
