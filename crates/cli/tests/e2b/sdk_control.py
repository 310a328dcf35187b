"""E2B's Python SDK (PyPI ``e2b``, pinned in .ci/sdk-venvs) against Warren's E2B control
plane: create (metadata, envs, timeout, network, idempotency), info, list (metadata and
state filters, pages), timeout, connect, pause and resume, metrics, snapshots (and a
sandbox from one), fork, network updates, kill, and E2B's error shape.

Run by crates/cli/tests/e2b.rs with E2B_API_URL (the Warren listener) and E2B_API_KEY.
Each test prints ``ok <name>`` or ``FAIL <name>: <traceback>``; every sandbox made is
killed; the exit status is 1 if any test failed.
"""

import os
import secrets
import sys
from datetime import datetime, timedelta, timezone

import httpx
from e2b import Sandbox, SandboxQuery, SandboxState
from e2b.exceptions import SandboxException, NotFoundException
from harness import run

RUN = secrets.token_hex(4)
MADE: list[str] = []


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


def eq(actual, expected, what: str) -> None:
    check(actual == expected, f"{what}: expected {expected!r}, got {actual!r}")


def create(**kw) -> Sandbox:
    meta = {"run": RUN, **kw.pop("metadata", {})}
    sb = Sandbox.create(metadata=meta, **kw)
    MADE.append(sb.sandbox_id)
    return sb


def near(when: datetime, ahead: timedelta, what: str) -> None:
    when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    off = when - (datetime.now(timezone.utc) + ahead)
    check(abs(off) < timedelta(seconds=30), f"{what}: {when} is not ~{ahead} ahead (off {off})")


def test_create_and_info() -> None:
    sb = create(timeout=600, envs={"A": "1"}, metadata={"team": "evals"})
    info = sb.get_info()
    eq(info.sandbox_id, sb.sandbox_id, "id")
    eq(info.template_id, "base", "template")
    eq(info.metadata.get("team"), "evals", "metadata")
    check(not any(k.startswith("e2b.") for k in info.metadata), f"Warren's keys shown: {info.metadata}")
    eq(info.state, SandboxState.RUNNING, "state")
    check(info.cpu_count >= 1 and info.memory_mb > 0, f"resources {info.cpu_count} {info.memory_mb}")
    near(info.end_at, timedelta(seconds=600), "end_at")
    check(Version(info.envd_version) >= Version("0.6.4"), f"envd version {info.envd_version}")
    # The same through the static form.
    eq(Sandbox.get_info(sb.sandbox_id).sandbox_id, sb.sandbox_id, "static get_info")


def test_timeout_and_connect() -> None:
    sb = create(timeout=600)
    sb.set_timeout(120)
    near(sb.get_info().end_at, timedelta(seconds=120), "set_timeout shortens")
    # connect extends, never shortens.
    Sandbox.connect(sb.sandbox_id, timeout=30)
    near(sb.get_info().end_at, timedelta(seconds=120), "connect does not shorten")
    Sandbox.connect(sb.sandbox_id, timeout=900)
    near(sb.get_info().end_at, timedelta(seconds=900), "connect extends")


def test_pause_resume() -> None:
    sb = create()
    eq(sb.pause(), True, "pause")
    eq(sb.get_info().state, SandboxState.PAUSED, "paused")
    eq(Sandbox.pause(sb.sandbox_id), False, "pausing a paused sandbox says so (409)")
    Sandbox.connect(sb.sandbox_id)
    eq(sb.get_info().state, SandboxState.RUNNING, "connect resumes")
    # Filesystem-only pause: processes end, connect starts it again.
    sb.pause(keep_memory=False)
    eq(sb.get_info().state, SandboxState.PAUSED, "filesystem pause")
    Sandbox.connect(sb.sandbox_id)
    eq(sb.get_info().state, SandboxState.RUNNING, "connect starts it")


def test_list() -> None:
    tag = secrets.token_hex(4)
    boxes = [create(metadata={"list": tag, "idx": str(i)}) for i in range(3)]
    boxes[2].pause()

    def ids(query=None, limit=None) -> list[str]:
        pager = Sandbox.list(query=query, limit=limit)
        out = []
        while pager.has_next:
            out.extend(s.sandbox_id for s in pager.next_items())
        return out

    every = ids(SandboxQuery(metadata={"list": tag}))
    eq(sorted(every), sorted(b.sandbox_id for b in boxes), "metadata filter")
    eq(ids(SandboxQuery(metadata={"list": tag, "idx": "1"})), [boxes[1].sandbox_id], "AND filter")
    running = ids(SandboxQuery(metadata={"list": tag}, state=[SandboxState.RUNNING]))
    eq(sorted(running), sorted(b.sandbox_id for b in boxes[:2]), "state filter")
    paged = Sandbox.list(query=SandboxQuery(metadata={"list": tag}), limit=2)
    first = paged.next_items()
    eq(len(first), 2, "first page")
    check(paged.has_next, "a second page")
    rest = paged.next_items()
    eq(len(rest), 1, "second page")
    check(not paged.has_next, "no third page")
    eq(sorted(s.sandbox_id for s in first + rest), sorted(every), "pages cover all")


def test_metrics() -> None:
    sb = create()
    metrics = sb.get_metrics()
    check(len(metrics) >= 1, "no metrics")
    m = metrics[-1]
    check(m.cpu_count >= 1 and m.mem_total > 0 and m.mem_used > 0, f"metric {m}")


def test_snapshots_and_fork() -> None:
    sb = create()
    snap = sb.create_snapshot()
    check(bool(snap.snapshot_id), "snapshot id")
    listed = [s.snapshot_id for s in sb.list_snapshots().next_items()]
    check(snap.snapshot_id in listed, f"{snap.snapshot_id} not in {listed}")
    restored = create(template=snap.snapshot_id)
    eq(restored.get_info().state, SandboxState.RUNNING, "sandbox from a snapshot")
    forks = sb.fork(count=2)
    eq(len(forks), 2, "two forks")
    for f in forks:
        check(not isinstance(f, Exception), f"fork failed: {f}")
        MADE.append(f.sandbox_id)
        eq(f.get_info().state, SandboxState.RUNNING, "fork running")
    Sandbox.delete_snapshot(snap.snapshot_id)
    listed = [s.snapshot_id for s in sb.list_snapshots().next_items()]
    check(snap.snapshot_id not in listed, "deleted snapshot still listed")


def test_network() -> None:
    sb = create(allow_internet_access=False)
    eq(sb.get_info().allow_internet_access, False, "allow_internet_access false")
    sb.update_network({"allow_out": ["198.51.100.7"], "deny_out": ["0.0.0.0/0"]})
    raw = httpx.get(
        f"{os.environ['E2B_API_URL']}/v1/sandboxes/{sb.sandbox_id}/network",
        headers={"Authorization": f"Bearer {os.environ['E2B_API_KEY']}"},
    ).json()
    eq(raw["egress"]["default"], "deny", "policy default")
    eq(raw["egress"]["rules"], [{"action": "allow", "target": "198.51.100.7"}], "policy rules")


def test_idempotency() -> None:
    key = f"idem-{secrets.token_hex(6)}"
    a = create(idempotency_key=key)
    b = create(idempotency_key=key)
    eq(b.sandbox_id, a.sandbox_id, "a retried create returns the same sandbox")


def test_kill_and_errors() -> None:
    sb = create()
    eq(sb.kill(), True, "kill")
    eq(Sandbox.kill(sb.sandbox_id), False, "killing a gone sandbox says so")
    try:
        Sandbox.get_info(sb.sandbox_id)
        raise AssertionError("get_info after kill worked")
    except (NotFoundException, SandboxException):
        pass
    # E2B's error shape, which the generated client needs.
    resp = httpx.get(
        f"{os.environ['E2B_API_URL']}/sandboxes/sb-nope",
        headers={"X-API-KEY": os.environ["E2B_API_KEY"]},
    )
    eq(resp.status_code, 404, "unknown sandbox")
    eq(resp.json()["code"], 404, "error code is the int status")
    check(isinstance(resp.json()["message"], str), "error message")
    resp = httpx.get(f"{os.environ['E2B_API_URL']}/v2/sandboxes")
    eq(resp.status_code, 401, "no key")
    eq(resp.json()["code"], 401, "401 in E2B's shape")
    try:
        create(template="no-such-template")
        raise AssertionError("an unknown template was accepted")
    except SandboxException as e:
        check("not found" in str(e).lower(), f"unknown template: {e}")


from packaging.version import Version  # noqa: E402 (the SDK depends on packaging)

TESTS = [
    test_create_and_info,
    test_timeout_and_connect,
    test_pause_resume,
    test_list,
    test_metrics,
    test_snapshots_and_fork,
    test_network,
    test_idempotency,
    test_kill_and_errors,
]


def main() -> int:
    return run(TESTS, MADE, sys.argv)


if __name__ == "__main__":
    sys.exit(main())
