"""A box's broker credentials file, written by ``loudspeaker broker config``.

JSON, mode 0600: ``{"url": "mqtts://host:8883", "username": "lb-01", "password": "...",
"tls_ca": "/etc/loudspeaker/ca.crt"}``. Reading it from a file keeps the password out of
the process list and shell history, where ``--broker mqtt://user:pass@host`` would put it.
"""

from __future__ import annotations

import json
import stat
from dataclasses import replace
from pathlib import Path

from firmware_bridge.exceptions import KeyFileError
from firmware_bridge.keys import check_private
from firmware_bridge.mqtt import BrokerEndpoint

# The operators' broker account (docs/security.md): the one whose file may be group-readable.
OPERATOR_USER = "_operator"


def read_credentials(path: Path, *, group_readable: bool = False) -> BrokerEndpoint:
    """The endpoint described by a credentials file; ``KeyFileError`` says what is wrong.

    See :func:`read_login` (the same, with the file's site).
    """
    return read_login(path, group_readable=group_readable)[0]


def read_login(path: Path, *, group_readable: bool = False) -> tuple[BrokerEndpoint, str | None]:
    """The endpoint a credentials file describes, and the site it names (None if none).

    A box's file and the controller's must be 0600. The operators' (user name
    ``_operator``) may be 0640 with ``group_readable``: the operators' OS group reads it for
    the controller-down emergency path and the conformance kit (docs/security.md); any other
    account's file at 0640 is refused, and a file other accounts may read always is.
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if group_readable:
            if mode & 0o037:
                raise KeyFileError(
                    f"{path} is readable or writable by others (mode {mode:o}); "
                    f"run `chmod 640 {path}` (group: the operators)"
                )
        else:
            check_private(path)
        data = json.loads(path.read_text(encoding="utf-8"))
        endpoint = BrokerEndpoint.parse(str(data["url"]))
        username, password = str(data["username"]), str(data["password"])
        if group_readable and username != OPERATOR_USER and mode & 0o077:
            # Only the operators' own file may be shared with a group.
            raise KeyFileError(
                f"{path} holds the {username!r} account's password and its group may read "
                f"it (mode {mode:o}); only {OPERATOR_USER}.json may be 0640: run "
                f"`chmod 600 {path}`"
            )
    except OSError as exc:
        raise KeyFileError(f"cannot read credentials {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"credentials file {path} is malformed: missing or bad {exc}") from None
    tls_ca = data.get("tls_ca") or endpoint.tls_ca
    if tls_ca and tls_ca != "system" and not Path(tls_ca).is_absolute():
        tls_ca = str(path.parent / tls_ca)  # installed beside the credentials file
    site = data.get("site")
    endpoint = replace(endpoint, username=username, password=password, tls_ca=tls_ca)
    return endpoint, site if isinstance(site, str) else None
