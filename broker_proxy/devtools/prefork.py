"""Start `python -m broker_proxy.cli` for the tests by forking a pre-imported zygote.

The suite starts a few hundred proxies and CLI calls; each fresh interpreter spends about 0.7 s
(`run`) or 0.15 s (other commands) importing. `Popen` and `run` here are `subprocess.Popen` and
`subprocess.run` with one difference: when switched on (`enable`) and the command is exactly
`[sys.executable, "-m", "broker_proxy.cli", ...]` with no exec-only option (shell, preexec_fn,
pass_fds, user or group changes, a new session), the process is forked from the zygote
(devtools/zygote.py) instead of exec'd. Everything else (pipes, communicate, timeouts, signals,
the returncode) is the standard library's, so callers assert what they asserted before.

An environment that changes interpreter start-up (PYTHON*, locale variables) differs from the
zygote's and gets a plain exec. Any launcher failure falls back to a plain exec for that call
with one warning line on stderr; it never changes a result. Off unless `enable(True)` is called
(tests/conftest.py does; `BROKER_PROXY_TEST_PREFORK=0` switches it off there).
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import Any

from broker_proxy.devtools.zygote import STATUS

CLI = ("-m", "broker_proxy.cli")
START_TIMEOUT = 60.0
_state = {"enabled": False}


class LaunchError(RuntimeError):
    """The zygote could not start the process; the caller execs it instead."""


def enable(on: bool) -> None:
    """Switch forking from the zygote on or off for this process's later calls."""
    _state["enabled"] = on


def enabled() -> bool:
    return _state["enabled"]


def _start_settings(env: Mapping[str, str]) -> dict[str, str]:
    """The variables an interpreter reads once at start (flags, paths, locale, hash seed)."""
    return {name: value for name, value in env.items()
            if name.startswith(("PYTHON", "LC_")) or name in ("LANG", "LANGUAGE")}


class Zygote:
    """The client side of one zygote process, started on first use, gone with this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._control: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._settings: dict[str, str] = {}
        self._failed_start = False

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        environment = dict(os.environ)
        try:
            # Its failure is this module's one warning line, not a traceback in whatever stderr
            # a test is capturing.
            self._process = subprocess.Popen(
                [sys.executable, "-m", "broker_proxy.devtools.zygote", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)
        finally:
            theirs.close()
        ours.settimeout(START_TIMEOUT)
        try:
            ready = ours.recv(16)
        except OSError:  # a zygote still importing after START_TIMEOUT is killed like a dead one
            ready = b""
        if ready != b"ready":
            ours.close()
            self._process.kill()
            self._process.wait()
            self._failed_start = True  # the next calls exec at once, not import again first
            raise LaunchError("the zygote exited or hung while importing")
        ours.settimeout(None)
        self._settings = _start_settings(environment)
        self._control = ours
        atexit.register(self.close)
        return ours

    def close(self) -> None:
        """End the zygote and reap it, so its CPU time counts in this process's children."""
        with self._lock:
            if self._control is not None:
                self._control.close()
                self._control = None
            if self._process is not None:
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
                self._process = None

    def fits(self, env: Mapping[str, str]) -> bool:
        """Whether a child with `env` starts as the zygote started (unknown before its start)."""
        return self._control is None or _start_settings(env) == self._settings

    def launch(self, argv: list[str], env: Mapping[str, str], cwd: str,
               stdio: tuple[int, int, int]) -> tuple[int, socket.socket]:
        """Fork `python -m broker_proxy.cli argv`; its pid and the socket its status arrives on."""
        message = json.dumps({"argv": argv, "env": dict(env), "cwd": cwd}).encode()
        reply, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with self._lock:
                if self._control is None and self._failed_start:
                    raise LaunchError("the zygote could not start")
                control = self._control or self._start()
                try:
                    socket.send_fds(control, [message], [theirs.fileno(), *stdio])
                except OSError:
                    self._control = None
                    raise
            theirs.close()
            reply.settimeout(START_TIMEOUT)
            data = reply.recv(STATUS.size)
            reply.settimeout(None)
        except (OSError, LaunchError) as error:
            theirs.close()
            reply.close()
            raise LaunchError(str(error) or type(error).__name__) from error
        if len(data) != STATUS.size:
            reply.close()
            raise LaunchError("the zygote did not fork")
        return STATUS.unpack(data)[0], reply


_zygote = Zygote()


def _fits_zygote(args: Any, executable: Any, options: dict[str, Any]) -> bool:
    """A plain `python -m broker_proxy.cli ...` the zygote can start the same way an exec does."""
    if not isinstance(args, (list, tuple)) or len(args) < 3 or executable is not None:
        return False
    if os.fspath(args[0]) != sys.executable or tuple(args[1:3]) != CLI:
        return False
    defaults = {"preexec_fn": None, "close_fds": True, "pass_fds": (), "shell": False,
                "gid": None, "gids": None, "uid": None, "umask": -1,
                "start_new_session": False, "process_group": -1}
    return all(options[name] == value for name, value in defaults.items())


class Popen(subprocess.Popen[Any]):
    """`subprocess.Popen`, forked from the zygote when enabled and the command fits.

    Only process creation and reaping differ; both hooks are private methods of the standard
    library's POSIX Popen (unchanged from 3.12 to 3.13), chosen so that pipes, communicate(),
    timeouts and signals stay the standard library's own code.
    """

    _status: socket.socket | None = None

    def _execute_child(self, args: Any, executable: Any, preexec_fn: Any, close_fds: bool,
                       pass_fds: Any, cwd: Any, env: Any, startupinfo: Any, creationflags: int,
                       shell: bool, p2cread: int, p2cwrite: int, c2pread: int, c2pwrite: int,
                       errread: int, errwrite: int, restore_signals: bool, gid: Any, gids: Any,
                       uid: Any, umask: int, start_new_session: bool,
                       process_group: Any) -> None:
        options = {"preexec_fn": preexec_fn, "close_fds": close_fds, "pass_fds": tuple(pass_fds),
                   "shell": shell, "gid": gid, "gids": gids, "uid": uid, "umask": umask,
                   "start_new_session": start_new_session,
                   "process_group": -1 if process_group is None else process_group}
        environment = {os.fsdecode(k): os.fsdecode(v)
                       for k, v in (os.environ if env is None else env).items()}
        if enabled() and _fits_zygote(args, executable, options) and _zygote.fits(environment):
            stdio = (p2cread if p2cread != -1 else 0, c2pwrite if c2pwrite != -1 else 1,
                     errwrite if errwrite != -1 else 2)
            try:
                self.pid, self._status = _zygote.launch(
                    [os.fsdecode(a) for a in args[3:]], environment,
                    os.fsdecode(os.path.abspath(cwd if cwd is not None else os.getcwd())), stdio)
            except LaunchError as error:
                print(f"prefork: zygote unavailable ({error}); exec'ing instead",
                      file=sys.stderr, flush=True)
            else:
                self._child_created = True
                self._close_pipe_fds(p2cread, p2cwrite,  # type: ignore[attr-defined]
                                     c2pread, c2pwrite, errread, errwrite)
                return
        super()._execute_child(  # type: ignore[misc]
            args, executable, preexec_fn, close_fds, pass_fds, cwd, env, startupinfo,
            creationflags, shell, p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite,
            restore_signals, gid, gids, uid, umask, start_new_session, process_group)

    def _try_wait(self, wait_flags: int) -> tuple[int, int]:
        """waitpid() for a forked child: its status arrives on the reply socket."""
        if self._status is None:
            result: tuple[int, int] = super()._try_wait(wait_flags)  # type: ignore[misc]
            return result
        try:
            data = self._status.recv(STATUS.size,
                                     socket.MSG_DONTWAIT if wait_flags & os.WNOHANG else 0)
        except BlockingIOError:
            return 0, 0
        self._status.close()
        self._status = None
        if len(data) != STATUS.size:
            print(f"prefork: the zygote lost pid {self.pid}'s exit status", file=sys.stderr)
            return self.pid, 255 << 8
        code: int = STATUS.unpack(data)[0]
        return self.pid, (code << 8 if code >= 0 else -code)

    def _internal_poll(self, _deadstate: int | None = None, _del_safe: Any = None) -> int | None:
        if self._status is None:
            result: int | None = super()._internal_poll(_deadstate)  # type: ignore[misc]
            return result
        if self.returncode is None and self._waitpid_lock.acquire(False):  # type: ignore[attr-defined]
            try:
                if self.returncode is None:
                    pid, status = self._try_wait(os.WNOHANG)
                    if pid == self.pid:
                        self._handle_exitstatus(status)  # type: ignore[attr-defined]
            finally:
                self._waitpid_lock.release()  # type: ignore[attr-defined]
        return self.returncode


def run(*popenargs: Any, input: Any = None, capture_output: bool = False,
        timeout: float | None = None, check: bool = False,
        **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """`subprocess.run` (the same steps) with this module's Popen."""
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    with Popen(*popenargs, **kwargs) as process:
        try:
            stdout, stderr = process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        except BaseException:
            process.kill()
            raise
        code = process.poll()
        if check and code:
            raise subprocess.CalledProcessError(code, process.args, output=stdout, stderr=stderr)
    return subprocess.CompletedProcess(process.args, code or 0, stdout, stderr)
