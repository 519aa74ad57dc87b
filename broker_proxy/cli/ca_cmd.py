"""`broker-proxy ca path|export`: the CA agents must trust."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from broker_proxy.cli.common import home_of, running_proxy
from broker_proxy.home import Home

CA_FILE = "mitmproxy-ca-cert.pem"
_CERTS_HELP = "CA directory (default: the home's one CA, <home>/certs unless run --certs made it "\
    "elsewhere)"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ca = commands.add_parser("ca", help="where the proxy's CA certificate is")
    sub = ca.add_subparsers(dest="ca_command", metavar="ACTION", required=True)
    path = sub.add_parser("path", help="print the CA certificate's path (creates the CA if new)")
    path.add_argument("--certs", metavar="DIR", help=_CERTS_HELP)
    path.set_defaults(handler=path_command)
    export = sub.add_parser("export", help="copy the CA certificate (public part) to FILE")
    export.add_argument("file", metavar="FILE")
    export.add_argument("--certs", metavar="DIR", help=_CERTS_HELP)
    export.set_defaults(handler=export_command)


def ca_certificate(args: argparse.Namespace) -> Path:
    home = home_of(args)
    if args.certs:
        certs = Path(args.certs).absolute()
    elif info := running_proxy(home):
        certs = Path(str(info["ca"])).parent
    else:
        certs = home.ca_dir()
    from broker_proxy.addons.ca import ensure_ca

    return ensure_ca(certs)


def home_ca_path(home: Home) -> Path:
    """The certificate of the home's one CA (see Home.ca_dir), made or not."""
    return home.ca_dir() / CA_FILE


def path_command(args: argparse.Namespace) -> int:
    print(ca_certificate(args))
    return 0


def export_command(args: argparse.Namespace) -> int:
    shutil.copyfile(ca_certificate(args), args.file)
    print(f"CA certificate written to {args.file}")
    return 0
