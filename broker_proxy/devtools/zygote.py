"""The pre-imported process that forks `python -m broker_proxy.cli` children for the tests.

A fresh interpreter spends most of a short CLI call, and about 0.7 s of every `broker-proxy run`,
importing. The test suite starts a few hundred of them, so `devtools.prefork` keeps one of these
per test process: it imports what the CLI and the runner import once, then forks a child per
request. Each child is made to look like a fresh `python -m broker_proxy.cli`: default signal
dispositions, the caller's three standard streams and no other descriptor, the caller's working
directory, environment and argv; then the CLI's `__main__` runs with `runpy` and the interpreter
ends as it would (exit code, traceback, atexit handlers, threads joined).

Protocol (Unix SOCK_SEQPACKET): the control socket carries one message per request, a JSON
object {argv, env, cwd} with four descriptors (the reply socket, stdin, stdout, stderr). The
reply socket gets the child's pid at once, then its exit status as a Popen returncode (-N for
signal N), each a signed 8-byte big-endian integer. The zygote exits when the control socket
reaches end of file (the test process is gone). It is single-threaded: children are reaped on
SIGCHLD through `signal.set_wakeup_fd` in a selector loop.

Run as `python -m broker_proxy.devtools.zygote FD`; nothing in the product imports it.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import io
import json
import os
import runpy
import selectors
import signal
import socket
import struct
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, TextIO

# What `broker-proxy run` and the other commands import before they do anything. By name: the
# devtools package never imports the CLI statically (tests/test_layering.py).
PRELOAD = ("broker_proxy.cli", "broker_proxy.cli.run_cmd", "broker_proxy.runtime.process",
           "broker_proxy.runtime.run_services", "broker_proxy.addons.runner")
STATUS = struct.Struct("!q")
MAX_REQUEST = 1 << 20


@dataclass
class Request:
    """One `python -m broker_proxy.cli` to run in a forked child."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    stdio: list[int]


def preload() -> None:
    """Import what a CLI process imports at start; fail loudly if that started a thread."""
    for name in PRELOAD:
        importlib.import_module(name)
    if threading.active_count() != 1:
        raise RuntimeError(f"preloading started threads: {threading.enumerate()}")
    # Collections in the children then leave the preloaded objects' pages unwritten (shared),
    # as the proxy's own start-up freeze (runtime/gc_freeze.py) does for its workers.
    gc.collect()
    gc.freeze()


def serve(control: socket.socket) -> Request:
    """Fork a child per request until the control socket closes; returns only in a child."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_write)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ, "control")
    selector.register(wake_read, selectors.EVENT_READ, "reap")
    waiting: dict[int, socket.socket] = {}
    control.sendall(b"ready")
    while True:
        for key, _ in selector.select():
            if key.data == "reap":
                _drain(wake_read)
                _reap(waiting)
                continue
            received = _receive(control)
            if received is None:
                raise SystemExit(0)
            reply, request = received
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                selector.close()
                for sock in (control, reply, *waiting.values()):
                    sock.close()
                os.close(wake_read)
                os.close(wake_write)
                return request
            for fd in request.stdio:
                os.close(fd)
            _send(reply, pid)
            waiting[pid] = reply


def _receive(control: socket.socket) -> tuple[socket.socket, Request] | None:
    """The next request, or None when the test process has gone (end of file)."""
    while True:
        message, fds, flags, _ = socket.recv_fds(control, MAX_REQUEST, 4)
        if not message and not fds:
            return None
        if len(fds) == 4 and not flags & socket.MSG_TRUNC:
            break
        for fd in fds:  # malformed: drop it; the caller sees its reply socket close
            os.close(fd)
    given = json.loads(message)
    request = Request([str(a) for a in given["argv"]],
                      {str(k): str(v) for k, v in given["env"].items()}, str(given["cwd"]),
                      list(fds[1:]))
    return socket.socket(fileno=fds[0]), request


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _reap(waiting: dict[int, socket.socket]) -> None:
    """Collect every exited child and tell its caller the status."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        reply = waiting.pop(pid, None)
        if reply is not None:
            _send(reply, os.waitstatus_to_exitcode(status))
            reply.close()


def _send(reply: socket.socket, value: int) -> None:
    with contextlib.suppress(OSError):  # the caller dropped its end: nobody to tell
        reply.send(STATUS.pack(value))


def become(request: Request) -> None:
    """Turn this forked child into a fresh `python -m broker_proxy.cli` process's state."""
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(request.stdio):
        os.dup2(fd, target)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    os.chdir(request.cwd)
    os.environ.clear()
    os.environ.update(request.env)
    sys.argv = ["-m", *request.argv]  # runpy puts the module's path first, as `-m` does
    sys.path[0] = os.getcwd()
    _fresh_stdio()
    _fresh_module_state()


def _fresh_stdio() -> None:
    """New sys.std* objects, buffered as the interpreter buffers them for these descriptors.

    As create_stdio does: PYTHONUNBUFFERED (-u) makes the writers unbuffered and write-through
    (the zygote's own streams tell, its PYTHON* variables being the child's); otherwise stdout is
    line-buffered on a terminal only and stderr always.
    """
    buffered = not getattr(sys.__stdout__ or sys.stdout, "write_through", False)

    def stream(fd: int, mode: str, old: TextIO, line_buffering: bool) -> io.TextIOWrapper:
        size = 0 if mode == "w" and not buffered else -1
        binary = open(fd, mode + "b", buffering=size, closefd=False)  # noqa: SIM115 (sys.std*)
        return io.TextIOWrapper(binary, encoding=old.encoding, errors=old.errors, newline="\n",
                                line_buffering=buffered and line_buffering,
                                write_through=not buffered)
    stdin = stream(0, "r", sys.__stdin__ or sys.stdin, False)
    stdout = stream(1, "w", sys.__stdout__ or sys.stdout, os.isatty(1))
    stderr = stream(2, "w", sys.__stderr__ or sys.stderr, True)
    sys.stdin = sys.__stdin__ = stdin  # type: ignore[misc]
    sys.stdout = sys.__stdout__ = stdout  # type: ignore[misc]
    sys.stderr = sys.__stderr__ = stderr  # type: ignore[misc]


def _fresh_module_state() -> None:
    """Undo what an imported module decided from the zygote's environment at import time."""
    tempfile.tempdir = None  # TMPDIR is read at first use
    values: Any = sys.modules.get("prometheus_client.values")
    if values is not None:  # PROMETHEUS_MULTIPROC_DIR is read at import
        values.ValueClass = values.get_value_class()


def main(argv: list[str]) -> None:
    control = socket.socket(fileno=int(argv[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the test run's ^C is for the test process
    preload()
    request = serve(control)
    become(request)
    os._exit(run_cli())


def run_cli() -> int:
    """Run the CLI as `python -m` does and end as the interpreter ends, but for freeing memory.

    Py_FinalizeEx waits for non-daemon threads, runs atexit callbacks and flushes the standard
    streams; then it tears every module down, which for this many modules takes longer (about
    0.15 s) than a short command itself. The child does the first three and exits.
    """
    try:
        runpy.run_module("broker_proxy.cli", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as done:
        code = _exit_code(done.code)
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        code = -signal.SIGINT
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    if code == -signal.SIGINT:  # as Python does: die by the signal, so the parent sees it
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


def _exit_code(code: object) -> int:
    """SystemExit's code as the interpreter turns it into an exit status."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    main(sys.argv)
