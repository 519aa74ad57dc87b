"""Load a policy in a child process, so a reload never takes the proxy's interpreter with it.

Parsing and validating a large policy is seconds of pure Python and hundreds of megabytes of
YAML nodes. On a thread of the proxy it held the GIL against the event loop (5 s probe latency
while a 13 MB policy loaded), the cycle collector walked every node from whichever thread
allocated next, and the peak stayed in the proxy's RSS for good. In a child the parse runs on
the other core, its memory is returned to the system when it exits, and it can be killed the
moment a newer file makes it pointless.

Measured with a 100,000-secret policy against `broker-proxy run` (policy_scale_bench.py): on a
thread, probes through the proxy during the reload had p99 2.1 s (max 4.8 s) and the proxy kept
856 MiB; with the child, p99 0.16-0.22 s and 365 MiB. Chunked parsing with yields on the proxy's
side was the other candidate: it would keep the YAML tree's peak and the collector's walks in the
proxy, need a yield point threaded through every field parser, and could not be killed.

The watcher hands the child the file's bytes on stdin (so it reads exactly the content whose
digest the watcher compares) and the file's name as the only argument (for FILE:LINE:COL in
messages). The child answers on stdout with a stream of pickles:

    ("rejected", [PolicyIssue, ...])             the loader's PolicyError, issues as they are
    ("too_large", limit_mib)                      the load needed more memory than it may use
    ("policy", Policy without its secrets), then ("secrets", [(name, SecretPolicy), ...]) in
    batches of SECRETS_PER_FRAME, then ("end", number of secrets)

Batches keep each ``pickle.loads`` in the proxy short (one call holds the GIL throughout), so
the loop runs between them. The stream comes from our own code in a process we started, with
our own interpreter and package; even so it is read with an unpickler that only builds the
policy model's own types.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import resource
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from broker_proxy.policy.loader import (
    PolicyError,
    PolicyIssue,
    collector_paused,
    load_policy_bytes,
    read_policy_bytes,
)
from broker_proxy.policy.model import Policy, SecretPolicy

SECRETS_PER_FRAME = 250  # ~10 ms of unpickling per frame on this machine's slower core
# Address space the child may use. A 100,000-secret policy (15 MB) peaks at 0.8 GB of it; a
# file that needs more than this is refused with its own line instead of pushing the host into
# swap or the OOM killer's hands (which may well pick the proxy, the largest process).
MEMORY_LIMIT_MIB = 3072


class WorkerFailed(Exception):
    """The child did not answer with a policy or a rejection (it crashed, or was killed)."""


def command() -> list[str]:
    """The child's argv: this interpreter, this package (what the proxy itself runs on)."""
    return [sys.executable, "-m", "broker_proxy.runtime.policy_worker"]


# All the child's environment: it reads YAML and needs no secret, master key or token that
# the proxy's environment may hold.
_ENVIRONMENT = ("PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONHASHSEED", "LANG", "LC_ALL",
                "LC_CTYPE", "TMPDIR")


def start(source: str, data: bytes, argv: list[str] | None = None) -> subprocess.Popen[bytes]:
    """Start a child loading ``data``; its answer comes from ``communicate()`` (no input).

    The bytes go through an unlinked temporary file, not a pipe: ``communicate(input,
    timeout)`` retried after a timeout stops writing the input (CPython registers stdin only
    when given input again, which it then refuses), so on a busy machine a child still waiting
    for the end of a large policy hung the reload for good.
    """
    environment = {name: os.environ[name] for name in _ENVIRONMENT if name in os.environ}
    with tempfile.TemporaryFile() as given:
        given.write(data)
        given.seek(0)
        return subprocess.Popen([*(argv or command()), source], stdin=given,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                close_fds=True, env=environment)


def read_answer(output: bytes, source: str, returncode: int, stderr: bytes) -> Policy:
    """The child's policy, or the PolicyError it found; WorkerFailed for anything else.

    Meant for a thread of the proxy: the collector is paused while the batches come in, so it
    does not walk the growing model (and the old one) once per few thousand objects.
    """
    stream = io.BytesIO(output)
    try:
        with collector_paused():
            return _policy_of(_frames(stream), source)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError, IndexError) as error:
        last = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise WorkerFailed(f"the policy loader process exited with code {returncode}"
                           + (f": {last[0][:200]}" if last[0] else "")
                           + ("" if returncode else f" ({type(error).__name__})")) from None


# What a policy model is made of: the unpickler builds nothing else, whatever the stream says.
_MODEL_MODULES = frozenset({"broker_proxy.policy.model", "broker_proxy.policy.issues",
                            "broker_proxy.policy.protocol_rules",
                            "broker_proxy.policy.sign_in_fields", "broker_proxy.identity.roles",
                            "broker_proxy.policy.chat_rules", "datetime", "ipaddress"})
_BUILTINS = frozenset({"frozenset", "set", "dict", "list", "tuple", "str", "int", "bytes",
                       "getattr"})
# Compiled name globs (MCP tools, GraphQL operations) pickle as re._compile(pattern, flags):
# it builds a pattern and nothing else.
_ALSO = frozenset({("re", "_compile")})


class _ModelUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module in _MODEL_MODULES and not name.startswith("_")) \
                or (module == "builtins" and name in _BUILTINS) or (module, name) in _ALSO:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a policy")


def _frames(stream: BinaryIO) -> Iterator[tuple[Any, ...]]:
    while True:
        frame = _ModelUnpickler(stream).load()  # one per frame: each was pickled on its own
        if not isinstance(frame, tuple) or not frame:
            raise ValueError("not a frame")
        yield frame


def _policy_of(frames: Iterator[tuple[Any, ...]], source: str) -> Policy:
    kind, *rest = next(frames)
    if kind == "rejected":
        raise PolicyError(list(rest[0]))
    if kind == "too_large":
        raise PolicyError([PolicyIssue(
            source, 0, 0, "policy", f"too large to load: it needs more than {rest[0]} MiB "
            "of memory; split it or remove unused secrets")])
    if kind != "policy" or not isinstance(rest[0], Policy):
        raise ValueError(f"unexpected frame {kind!r}")
    head: Policy = rest[0]
    secrets: dict[str, SecretPolicy] = {}
    for kind, *rest in frames:
        if kind == "end":
            if rest[0] != len(secrets):
                raise ValueError("secrets missing")
            return dataclasses.replace(head, secrets=secrets)
        if kind != "secrets":
            raise ValueError(f"unexpected frame {kind!r}")
        secrets.update(rest[0])
    raise ValueError("no end frame")  # pragma: no cover - _frames ends only by raising


# At start-up there is no event loop to keep serving, only memory to keep: a file this large
# is loaded in a child too (a 100,000-secret policy left the proxy at 838 MiB instead of 376);
# a smaller one is loaded in the proxy, which starts faster without a second interpreter.
START_IN_CHILD_ABOVE = 1 << 20


def load_at_start(path: str | Path) -> Policy:
    """The policy ``run`` starts with; the loader's PolicyError when it cannot be used.

    Where no child can be started or it does not answer, the proxy loads the file itself:
    the answer to "is this policy good" must not depend on the child.
    """
    source = str(path)
    data = read_policy_bytes(path)
    if len(data) <= START_IN_CHILD_ABOVE:
        return load_policy_bytes(data, source)
    try:
        child = start(source, data)
    except OSError:
        return load_policy_bytes(data, source)
    output, errors = child.communicate()
    try:
        return read_answer(output, source, child.returncode, errors)
    except WorkerFailed:
        return load_policy_bytes(data, source)


def write_answer(data: bytes, source: str, out: BinaryIO) -> None:
    """The child's side: load ``data`` and write the frames described above to ``out``."""
    def put(*frame: Any) -> None:
        pickle.dump(frame, out, protocol=pickle.HIGHEST_PROTOCOL)

    try:
        policy = load_policy_bytes(data, source)
    except PolicyError as error:
        put("rejected", error.issues)
        return
    except MemoryError:
        put("too_large", MEMORY_LIMIT_MIB)
        return
    put("policy", dataclasses.replace(policy, secrets={}))
    items = list(policy.secrets.items())
    for start_at in range(0, len(items), SECRETS_PER_FRAME):
        put("secrets", items[start_at:start_at + SECRETS_PER_FRAME])
    put("end", len(items))


def _limit_memory() -> None:
    limit = MEMORY_LIMIT_MIB * 1024 * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft == resource.RLIM_INFINITY or soft > limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m broker_proxy.runtime.policy_worker SOURCE < POLICY",
              file=sys.stderr)
        return 2
    _limit_memory()
    data = sys.stdin.buffer.read()
    out = sys.stdout.buffer
    write_answer(data, argv[0], out)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
