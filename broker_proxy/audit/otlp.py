"""Ship audit records to an OpenTelemetry collector over OTLP/HTTP, off the request path.

The shipper never sees a request: it tails the audit log on its own thread (ChainTail), so a slow
or dead collector cannot slow or block one; the log, not a memory queue, is the buffer. A batch
that cannot be sent is counted (`broker_otlp_records_unsent_total`) and sent again, from the same
records, after a back-off; the position (the next seq to send) is kept in `<home>/otlp.position`
only once the collector accepted a batch, so a restart goes on where delivery stopped. Delivery is
at least once: a batch the collector took but whose answer was lost is sent again.

The OpenTelemetry SDK's log exporter does the OTLP encoding and HTTP (with its own short retries,
bounded by `timeout`); its batch processor is not used, because it drops what it cannot send.
Each log record's body is the audit record's canonical JSON line (the whole record, verifiable);
attributes carry the fields a collector filters on.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from broker_proxy import __version__
from broker_proxy.audit.reading import LOG_TAG, ChainTail

log = logging.getLogger(__name__)

BATCH: Final = 256
POLL: Final = 0.25  # seconds between looks at the log when it has nothing new
BACKOFF: Final = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # seconds after 1, 2, ... failed sends
SEND_TIMEOUT: Final = 5.0
_ATTRIBUTES: Final = ("event", "decision", "reason", "grant", "agent", "secrets", "method",
                      "host", "port", "status", "replica", "by")
_SCOPE: Final = InstrumentationScope("broker_proxy.audit", __version__)


def logs_url(endpoint: str) -> str:
    """`http://collector:4318` -> `http://collector:4318/v1/logs` (a full URL is kept)."""
    if not endpoint.startswith(("http://", "https://")):
        raise ValueError(f"OTLP endpoint must be an http:// or https:// URL, not {endpoint!r}")
    return endpoint if endpoint.rstrip("/").endswith("/v1/logs") else \
        endpoint.rstrip("/") + "/v1/logs"


def _nanoseconds(ts: object) -> int | None:
    try:
        moment = datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    except ValueError:
        return None
    return int(moment.timestamp() * 1_000_000) * 1000


def to_log_record(record: dict[str, Any], resource: Resource) -> ReadableLogRecord:
    body = {name: value for name, value in record.items() if name != LOG_TAG}
    attributes: dict[str, Any] = {"broker.audit.seq": record["seq"],
                                  "broker.audit.log": str(record.get(LOG_TAG, ""))}
    for name in _ATTRIBUTES:
        value = record.get(name)
        if value is not None and value != []:
            attributes[f"broker.audit.{name}"] = value
    denied = record.get("decision") == "deny"
    entry = LogRecord(
        timestamp=_nanoseconds(record.get("ts")),
        severity_number=SeverityNumber.WARN if denied else SeverityNumber.INFO,
        severity_text="WARN" if denied else "INFO",
        body=json.dumps(body, sort_keys=True, separators=(",", ":")),
        attributes=attributes,
        event_name=f"broker.audit.{record.get('event')}",
    )
    return ReadableLogRecord(log_record=entry, resource=resource, instrumentation_scope=_SCOPE)


class OtlpShipper:
    """A daemon thread that sends the audit log to an OTLP/HTTP collector."""

    def __init__(self, live: Path, position_file: Path, endpoint: str, *,
                 on_sent: Callable[[int], None], on_unsent: Callable[[int], None],
                 instance: str | None = None) -> None:
        self._tail = ChainTail(live)
        self._position_file = position_file
        self._exporter = OTLPLogExporter(endpoint=logs_url(endpoint), timeout=SEND_TIMEOUT)
        attributes = {"service.name": "broker-proxy", "service.version": __version__}
        if instance:
            attributes["service.instance.id"] = instance
        self._resource = Resource.create(attributes)
        self._on_sent, self._on_unsent = on_sent, on_unsent
        self.next_seq = self._load_position()
        self._pending: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="audit-otlp", daemon=True)

    def start(self) -> OtlpShipper:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop without waiting for the collector: what is unsent stays in the log for later."""
        self._stop.set()
        self._exporter.shutdown()  # wakes a send that is waiting out its retries
        self._thread.join(timeout=SEND_TIMEOUT + 1)

    def _load_position(self) -> int:
        try:
            return int(json.loads(self._position_file.read_text())["next_seq"])
        except FileNotFoundError:
            return 0  # a new collector gets the whole log
        except (OSError, ValueError, KeyError, TypeError):
            log.error("OTLP position file %s is unreadable; sending from the start",
                      self._position_file)
            return 0

    def _save_position(self) -> None:
        staging = self._position_file.with_name(self._position_file.name + ".tmp")
        staging.write_text(json.dumps({"next_seq": self.next_seq}) + "\n")
        os.replace(staging, self._position_file)

    def _fill(self) -> None:
        wanted = self.next_seq + len(self._pending)
        whole_chain = self._tail.reads_whole_chain
        for record in self._tail.new_records():
            if record["seq"] < wanted:
                continue
            if record["seq"] != wanted:
                self._tail.reread()  # a rotation during the read, or records removed
                if whole_chain:  # seen on a read of the whole chain: records are missing
                    log.error("audit log has a gap before seq %s; OTLP export waits (run "
                              "`audit verify`)", record["seq"])
                return
            self._pending.append(record)
            wanted += 1
            if len(self._pending) >= BATCH:
                return

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                if len(self._pending) < BATCH:
                    self._fill()
                if not self._pending:
                    self._stop.wait(POLL)
                    continue
                batch = [to_log_record(record, self._resource) for record in self._pending]
                result = self._exporter.export(batch)
            except Exception as error:  # the shipper must outlive any one bad batch or file
                log.error("OTLP export failed: %s", type(error).__name__)
                result = LogRecordExportResult.FAILURE
            if self._stop.is_set():
                return
            if result is LogRecordExportResult.SUCCESS:
                self.next_seq += len(self._pending)
                self._on_sent(len(self._pending))
                self._pending = []
                failures = 0
                try:
                    self._save_position()
                except OSError as error:
                    log.error("cannot save OTLP position: %s", error.strerror)
                continue
            if self._pending:
                self._on_unsent(len(self._pending))
            self._stop.wait(BACKOFF[min(failures, len(BACKOFF) - 1)])
            failures += 1
