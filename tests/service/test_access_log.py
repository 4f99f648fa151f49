"""The access line: one flat ECS object, and the audit's named fields at its end."""

import json
import os
import tempfile

import msgspec

from service.access_log import AccessLog, Audit

BASE_FIELDS = [
    "@timestamp",
    "log.level",
    "message",
    "ecs.version",
    "event.dataset",
    "log.logger",
    "service.name",
    "process.pid",
    "http.request.id",
    "http.request.method",
    "url.path",
    "http.response.status_code",
    "event.duration",
]
AUDIT = Audit(
    number="MYIDI45OOV7PPDV7",
    origin="MY",
    destination="ID",
    weight="1.234",
    created_at="2018-11-20T19:29:32+08:00",
    customer_id="de619854-b59b-425e-9db4-943979e1bd49",
    customer_slug="redbox-logistics",
)


def lines_written(*audits: Audit | None) -> list[str]:
    """The lines an AccessLog writes for one request per audit (None: a line without one)."""
    with tempfile.TemporaryFile() as out:
        log = AccessLog(fd=out.fileno())
        for n, audit in enumerate(audits):
            log.write(
                request_id=f"r-{n}",
                method="GET",
                path="/next-tracking-number",
                status=200,
                duration_ns=1234,
                audit=audit,
            )
        log.flush()
        out.seek(0)
        return out.read().decode().splitlines()


async def test_an_audited_line_is_one_flat_object_with_the_audit_last() -> None:
    (line,) = lines_written(AUDIT)
    fields = json.loads(line)
    assert list(fields) == [
        *BASE_FIELDS,
        "tracking.number",
        "tracking.origin",
        "tracking.destination",
        "tracking.weight_kg",
        "tracking.created_at",
        "tracking.customer.id",
        "tracking.customer.slug",
    ]
    assert fields["message"] == "GET /next-tracking-number 200"
    assert fields["log.level"] == "info"
    assert fields["process.pid"] == os.getpid()
    assert fields["http.request.id"] == "r-0"
    assert fields["event.duration"] == 1234
    assert fields["tracking.number"] == "MYIDI45OOV7PPDV7"
    assert fields["tracking.weight_kg"] == "1.234"
    assert fields["tracking.customer.slug"] == "redbox-logistics"


async def test_a_batch_lists_every_number_and_a_line_without_audit_has_none() -> None:
    batch = msgspec.structs.replace(AUDIT, numbers=["A", "B"])
    plain, audited, listed = (json.loads(line) for line in lines_written(None, AUDIT, batch))
    assert list(plain) == BASE_FIELDS
    assert "tracking.numbers" not in audited
    assert listed["tracking.numbers"] == ["A", "B"]
    assert listed["tracking.number"] == AUDIT.number
