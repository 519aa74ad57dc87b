"""The README's front page, run as a new user types it: a fresh home (HOME is a new directory,
so `~/.broker-proxy` does not exist), the marked `sh` blocks in order, in bash.

The only changes to what the page says are the ones a person makes by reading: the grant id and
token printed by `grant issue` go where the page writes `g_...` and `bpt_...`; the secret's value
comes on stdin; `make run` is the local stand-in recipe of the same page (the real
api.github.com is not reachable here), with the stand-in's port where the page says 8443 and
free ports for the proxy's own listeners (other tests may hold 8080). The stand-in is a local
HTTPS echo server with a certificate for api.github.com from its own CA (`stand-in-ca.pem`).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from broker_proxy.devtools.echo_server import EchoServer
from broker_proxy.devtools.local_pki import write_pki
from tests.doc_blocks import REPO, marked

pytestmark = pytest.mark.e2e

START_PROXY = ("(broker-proxy_run > ~/proxy.log 2>&1 &) ; "
               "for _ in $(seq 150); do [ -f ~/.broker-proxy/run.json ] && break; sleep 0.2; done; "
               "[ -f ~/.broker-proxy/run.json ] || { cat ~/proxy.log >&2; exit 1; }")


def _script(stand_in_port: int) -> str:
    front, stand_in = marked("front-page"), marked("stand-in")
    lines = ["set -euo pipefail", f"cd {shlex.quote(str(REPO))}"]
    for command in front.commands:
        if command == "make run":
            lines.append("pushd ~ >/dev/null")
            for step in stand_in.commands:
                if step.startswith("broker-proxy run "):
                    run = (step.replace("8443", str(stand_in_port))
                           + " --listen 127.0.0.1:0 --admin 127.0.0.1:0 --metrics 127.0.0.1:0")
                    lines.append(START_PROXY.replace("broker-proxy_run", run))
                else:
                    lines.append(step)
            lines.append("popd >/dev/null")
            continue
        if command.startswith("broker-proxy secret set "):
            command += ' < "$SECRET_FILE"'
        if command.startswith("broker-proxy grant issue "):
            command += (" | tee ~/issued.txt; GRANT_ID=$(awk '/^grant /{print $2}' ~/issued.txt);"
                        " TOKEN=$(awk '/token:/{print $2}' ~/issued.txt)")
        if command.startswith("curl "):
            command += " -sS -o ~/answer.txt -w '%{http_code}' > ~/status.txt"
        lines.append(command.replace("g_...", "$GRANT_ID").replace("bpt_...", "$TOKEN"))
    return "\n".join(lines) + "\n"


def test_the_front_page_steps_work_in_a_fresh_home(tmp_path: Path) -> None:
    home = tmp_path / "user"
    home.mkdir()
    pki = write_pki(tmp_path / "stand-in-pki", ["api.github.com"])
    shutil.copy(pki.ca_cert_path, home / "stand-in-ca.pem")
    stand_in = EchoServer(pki.cert_path, pki.key_path).start()
    value = "ghp_" + secrets.token_urlsafe(30)
    (tmp_path / "secret").write_text(value)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BROKER_PROXY_", "VIRTUAL_ENV")) and "PROXY" not in k.upper()
           and not k.endswith(("CA_BUNDLE", "CERT_FILE"))}
    env |= {"HOME": str(home), "SECRET_FILE": str(tmp_path / "secret"),
            "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"}
    script = _script(stand_in.port)
    try:
        done = subprocess.run(["bash", "-c", script + "broker-proxy audit verify\n"],
                              env=env, capture_output=True, text=True, timeout=400, check=False)
    finally:
        info = home / ".broker-proxy" / "run.json"
        if info.exists():
            os.kill(json.loads(info.read_text())["pid"], 15)
        stand_in.stop()
    log = (home / "proxy.log").read_text() if (home / "proxy.log").exists() else ""
    assert done.returncode == 0, f"{script}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{log}"
    assert (home / "status.txt").read_text() == "200"
    [received] = stand_in.requests
    assert received.header("Authorization") == f"Bearer {value}"
    assert value not in (home / "answer.txt").read_text()
    assert value not in done.stdout + done.stderr + log
    assert done.stdout.rstrip().endswith("audit log ok")
    assert "console: http://" in log
