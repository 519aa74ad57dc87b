"""The HTTP methods a policy may name: IANA's HTTP Method Registry.

A method outside it (`POTS`) is a typo, not a method some API uses: it would validate, match
nothing, and quietly refuse the requests the operator meant to allow.
https://www.iana.org/assignments/http-methods (RFC 9110 and the WebDAV, versioning, linking
and QUERY extensions). PRI (the HTTP/2 connection preface) and "*" are not request methods.
"""

from __future__ import annotations

from typing import Final

REGISTERED_METHODS: Final = (
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "QUERY",
    "CONNECT", "TRACE",
    "ACL", "BASELINE-CONTROL", "BIND", "CHECKIN", "CHECKOUT", "COPY", "LABEL", "LINK", "LOCK",
    "MERGE", "MKACTIVITY", "MKCALENDAR", "MKCOL", "MKREDIRECTREF", "MKWORKSPACE", "MOVE",
    "ORDERPATCH", "PROPFIND", "PROPPATCH", "REBIND", "REPORT", "SEARCH", "UNBIND",
    "UNCHECKOUT", "UNLINK", "UNLOCK", "UPDATE", "UPDATEREDIRECTREF", "VERSION-CONTROL",
)
