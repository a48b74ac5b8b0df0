"""STAND-IN for Docker's ``awslogs`` logging driver (the host ships the containers' output with it;
no Docker here).

On a host, compose gives each container the driver with the site's log group and the tag
``<service>/<container id>`` (userdata/site.py ``_logging``): every line the container writes to its
output becomes one CloudWatch Logs event in the stream named by the tag. The local site's nginx
writes the same lines to a file; this sends them the same way to CloudWatch Logs in the AWS API
emulator, so a test reads the audit trail back from where an auditor reads it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

# PutLogEvents' limits: 10,000 events and about 1 MB per call.
BATCH = 1000


def ship(logs: Any, group: str, stream: str, lines: list[str]) -> int:
    """Send ``lines`` as events (one per line, as the driver does) to ``group``/``stream``; the count."""
    try:
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    now = int(time.time() * 1000)
    events = [{"timestamp": now, "message": line} for line in lines if line]
    for start in range(0, len(events), BATCH):
        logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events[start : start + BATCH])
    return len(events)


def ship_file(logs: Any, group: str, service: str, path: Path, container: str = "local") -> int:
    """The lines of the file ``path`` (a service's output) to the stream ``<service>/<container>``."""
    return ship(logs, group, f"{service}/{container}", path.read_text().splitlines())


def read(logs: Any, group: str, prefix: str = "") -> list[str]:
    """Every event's message in ``group`` (streams starting with ``prefix``), oldest first."""
    kwargs: dict[str, Any] = {"logGroupName": group, **({"logStreamNamePrefix": prefix} if prefix else {})}
    messages: list[str] = []
    for page in logs.get_paginator("filter_log_events").paginate(**kwargs):
        messages += [event["message"] for event in page["events"]]
    return messages
