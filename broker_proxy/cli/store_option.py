"""`--store URL`: where grants live, for `run` and the `grant` commands alike."""

from __future__ import annotations

import argparse

from broker_proxy.grants.factory import STORE_ENV


def add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="URL",
        help=f"grant store: redis://HOST:PORT/DB, rediss://HOST:PORT/DB or sqlite:///PATH "
        f"(default: ${STORE_ENV}, else <home>/grants.sqlite3); every replica and the CLI "
        f"must name the same one. A URL with a password belongs in ${STORE_ENV}, not argv",
    )
