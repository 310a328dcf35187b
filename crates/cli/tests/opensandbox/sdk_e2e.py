"""End-to-end check of Warren's OpenSandbox-compatible API with the real SDK.

This script drives the unmodified OpenSandbox Python SDK (PyPI ``opensandbox``,
sync API) against a running Warren server, the way an agent developer would.
A Rust integration test starts the server and runs it as a plain script (no
pytest):

    python sdk_e2e.py            # the main suite
    python sdk_e2e.py auth       # only the authentication checks
    python sdk_e2e.py files kill # only the named tests (for debugging)

Environment:
    OPEN_SANDBOX_DOMAIN   server address the SDK appends /v1 to,
                          e.g. 127.0.0.1:41234/opensandbox
    OPEN_SANDBOX_API_KEY  a valid API key
    WARREN_OS_IMAGE       image to create sandboxes from (sh, bash, coreutils,
                          python3 inside)
    WARREN_OS_HOST_DIR    host directory the server allows as a host-path
                          volume; holds hello.txt = "from the host\\n"
    SDK_E2E_DEBUG=1       optional: show the SDK's own log output
    SDK_E2E_TIMEOUT       optional: seconds before a hung run dumps every
                          thread's stack and exits 1 (default 300)

Each test prints ``ok <name>`` or ``FAIL <name>: <traceback>``; the run goes on
after a failure, kills every sandbox it created, and exits 1 if any test failed.
At most four sandboxes are alive at once.
"""

import contextlib
import faulthandler
import json
import logging
import os
import secrets
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

import httpx

from opensandbox import SandboxManagerSync, SandboxSync
from opensandbox.config.connection_sync import ConnectionConfigSync
from opensandbox.exceptions import SandboxApiException, SandboxException
from opensandbox.models.execd import OutputMessage, RunCommandOpts
from opensandbox.models.execd_sync import ExecutionHandlersSync
from opensandbox.models.filesystem import (
    ContentReplaceEntry,
    DirectoryListEntry,
    MoveEntry,
    SearchEntry,
    SetPermissionEntry,
    WriteEntry,
)
from opensandbox.models.sandboxes import (
    Host,
    NetworkPolicy,
    NetworkRule,
    SandboxFilter,
    SnapshotFilter,
    Volume,
)

DOMAIN = os.environ.get("OPEN_SANDBOX_DOMAIN", "")
API_KEY = os.environ.get("OPEN_SANDBOX_API_KEY", "")
IMAGE = os.environ.get("WARREN_OS_IMAGE", "opensandbox/code-interpreter:latest")
HOST_DIR = os.environ.get("WARREN_OS_HOST_DIR", "")
# The runtime the daemon's sandboxes use (Warren's test sets it): gVisor refuses host
# directory mounts (its file server writes as host root).
GVISOR = os.environ.get("WARREN_RUNTIME", "native") == "gvisor"

SUITE = "os-e2e"
RUN = secrets.token_hex(4)  # tags every sandbox of this run
EXECD_PORT = 44772

CONFIG = ConnectionConfigSync(
    domain=DOMAIN,
    api_key=API_KEY,
    request_timeout=timedelta(seconds=60),
)

# Sandboxes created and not yet killed, by id, and the run tags used:
# main() kills whatever is left.
LIVE: dict[str, SandboxSync] = {}
RUNS: set[str] = {RUN}


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def check(condition: bool, message: str) -> None:
    """An assertion that survives ``python -O``."""
    if not condition:
        raise AssertionError(message)


def eq(actual, expected, what: str) -> None:
    check(actual == expected, f"{what}: expected {expected!r}, got {actual!r}")


def expect_error(
    call: Callable[[], object], what: str, status: tuple[int, ...] | None = None
) -> SandboxException:
    """Run ``call``, require a SandboxException (with one of ``status`` if given)."""
    try:
        result = call()
    except SandboxException as e:
        if status is not None:
            code = getattr(e, "status_code", None)
            check(code in status, f"{what}: expected HTTP {status}, got {code} ({e})")
        return e
    raise AssertionError(f"{what}: expected an error, got {result!r}")


def wait_until(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        check(time.monotonic() < deadline, f"timed out after {seconds} s: {what}")
        time.sleep(0.1)


def utc(moment: datetime) -> datetime:
    """Treat a naive datetime as UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def check_expires_in(expires_at: datetime | None, ahead: timedelta, what: str) -> None:
    check(expires_at is not None, f"{what}: no expires_at")
    delta = utc(expires_at) - (datetime.now(timezone.utc) + ahead)
    check(
        abs(delta) < timedelta(seconds=60),
        f"{what}: expires_at {expires_at} is not ~{ahead} from now (off by {delta})",
    )


def stream_text(messages: list[OutputMessage]) -> str:
    """Join output events, whether each carries its line ending or not."""
    out = ""
    for m in messages:
        if out and not out.endswith(("\n", "\r")) and not m.text.startswith(("\n", "\r")):
            out += "\n"
        out += m.text
    return out.replace("\r\n", "\n").rstrip("\n")


def sh(sandbox: SandboxSync, command: str, **opts) -> str:
    """Run a foreground command that must succeed; return its stdout."""
    execution = sandbox.commands.run(command, opts=RunCommandOpts(**opts) if opts else None)
    check(
        execution.exit_code == 0,
        f"`{command}` exited {execution.exit_code}, error {execution.error}, "
        f"stderr {stream_text(execution.logs.stderr)!r}",
    )
    return execution.text


def create(run: str = RUN, extra_metadata: dict[str, str] | None = None, **kwargs) -> SandboxSync:
    """Create a sandbox of IMAGE tagged with this run, and remember it."""
    kwargs.setdefault("timeout", timedelta(minutes=10))
    RUNS.add(run)
    sandbox = SandboxSync.create(
        kwargs.pop("image", IMAGE),
        metadata={"suite": SUITE, "run": run, **(extra_metadata or {})},
        connection_config=CONFIG,
        **kwargs,
    )
    LIVE[sandbox.id] = sandbox
    return sandbox


def destroy(sandbox: SandboxSync) -> None:
    """Kill a sandbox (already gone is fine) and close its local resources.

    A sandbox whose kill fails stays in LIVE, for main() to try again.
    """
    try:
        sandbox.kill()
    except SandboxException as e:
        if getattr(e, "status_code", None) != 404:
            raise
    finally:
        sandbox.close()
    LIVE.pop(sandbox.id, None)


@contextlib.contextmanager
def new_sandbox(**kwargs) -> Iterator[SandboxSync]:
    sandbox = create(**kwargs)
    try:
        yield sandbox
    finally:
        destroy(sandbox)


def run_with_deadline(call: Callable[[], object], seconds: float) -> tuple[str, object]:
    """Run ``call`` in a daemon thread: ("returned", value), ("raised", exc) or ("hung", None)."""
    outcome: list[tuple[str, object]] = []

    def target() -> None:
        try:
            outcome.append(("returned", call()))
        except Exception as e:  # noqa: BLE001 - reported to the caller
            outcome.append(("raised", e))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return outcome[0] if outcome else ("hung", None)


def manager() -> SandboxManagerSync:
    return SandboxManagerSync.create(connection_config=CONFIG)


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------


def test_create_with_spec() -> None:
    policy = NetworkPolicy(
        default_action="deny",
        egress=[NetworkRule(action="allow", target="pypi.org")],
    )
    with new_sandbox(
        env={"GREETING": "hi"},
        resource={"cpu": "500m", "memory": "256Mi"},
        network_policy=policy,
    ) as sb:
        info = sb.get_info()
        eq(info.id, sb.id, "info.id")
        eq(info.status.state, "Running", "state")
        eq((info.metadata or {}).get("suite"), SUITE, "metadata suite")
        eq((info.metadata or {}).get("run"), RUN, "metadata run")
        check_expires_in(info.expires_at, timedelta(minutes=10), "expires_at")

        eq(sh(sb, "echo $GREETING"), "hi", "env GREETING")

        # The limits in force, as the sandbox's cgroup reports them through execd's metrics.
        metrics = sb.get_metrics()
        eq(metrics.memory_total_in_mib, 256, "memory limit (MiB)")
        eq(metrics.cpu_count, 0.5, "cpu limit")

        egress = sb.get_egress_policy()
        eq(egress.default_action, "deny", "egress default action")
        rules = [(r.action, r.target) for r in egress.egress or []]
        check(("allow", "pypi.org") in rules, f"egress rules {rules} lack allow pypi.org")
        # Rules change while it runs (merged by target; deleted by target).
        sb.patch_egress_rules([NetworkRule(action="allow", target="example.com")])
        sb.delete_egress_rules(["pypi.org"])
        egress = sb.get_egress_policy()
        rules = [(r.action, r.target) for r in egress.egress or []]
        eq(rules, [("allow", "example.com")], "egress rules after patch and delete")
        eq(egress.default_action, "deny", "egress default action after patch")


def test_commands() -> None:
    with new_sandbox() as sb:
        # Foreground: both streams captured.
        execution = sb.commands.run("echo out; echo err >&2")
        eq(execution.exit_code, 0, "exit code")
        eq(execution.error, None, "error")
        eq(stream_text(execution.logs.stdout), "out", "stdout")
        eq(stream_text(execution.logs.stderr), "err", "stderr")
        check(execution.complete is not None, "no execution_complete event")

        # Streamed, with handlers.
        seen: list[OutputMessage] = []
        inits: list[str] = []
        completions: list[object] = []
        handlers = ExecutionHandlersSync(
            on_stdout=seen.append,
            on_init=lambda init: inits.append(init.id),
            on_execution_complete=completions.append,
        )
        execution = sb.commands.run(
            "for i in 1 2 3; do echo $i; sleep 0.1; done", handlers=handlers
        )
        eq(stream_text(seen).splitlines(), ["1", "2", "3"], "streamed stdout lines")
        check(len(seen) >= 3, f"expected one stdout event per line, got {len(seen)}")
        eq(len(inits), 1, "init events")
        check(bool(inits[0]), "init event without an id")
        eq(execution.id, inits[0], "execution id")
        eq(len(completions), 1, "execution_complete events")
        eq(execution.exit_code, 0, "streamed exit code")

        # Failing command.
        execution = sb.commands.run("exit 7")
        eq(execution.exit_code, 7, "exit code of `exit 7`")
        check(execution.error is not None, "`exit 7` has no error")
        eq(execution.error.value, "7", "error value of `exit 7`")

        # Working directory and per-command env.
        eq(sh(sb, "pwd", working_directory="/tmp"), "/tmp", "working_directory")
        eq(sh(sb, "echo $X", envs={"X": "y"}), "y", "envs")

        # Timeout: the server stops the command after 1 s.
        started = time.monotonic()
        try:
            execution = sb.commands.run(
                "sleep 30", opts=RunCommandOpts(timeout=timedelta(seconds=1))
            )
            failed = execution.error is not None or execution.exit_code not in (0, None)
            check(failed, f"timed-out command looks successful: {execution}")
        except SandboxException:
            pass  # an error is also an acceptable way to report the timeout
        elapsed = time.monotonic() - started
        check(elapsed < 10, f"1 s timeout took {elapsed:.1f} s")


def test_background_commands() -> None:
    with new_sandbox() as sb:
        execution = sb.commands.run(
            "for i in $(seq 1 50); do echo line$i; sleep 0.05; done",
            opts=RunCommandOpts(background=True),
        )
        command_id = execution.id
        check(bool(command_id), "background command has no id")

        status = sb.commands.get_command_status(command_id)
        eq(status.running, True, "running right after start")

        def finished() -> bool:
            return sb.commands.get_command_status(command_id).running is False

        wait_until(finished, 15, "background command to finish")
        status = sb.commands.get_command_status(command_id)
        eq(status.exit_code, 0, "background exit code")

        logs = sb.commands.get_background_command_logs(command_id)
        lines = [line for line in logs.content.splitlines() if line]
        eq(lines, [f"line{i}" for i in range(1, 51)], "background logs")
        check(logs.cursor is not None, "logs without a cursor")
        more = sb.commands.get_background_command_logs(command_id, cursor=logs.cursor)
        eq(more.content.strip(), "", "logs after the cursor")

        # Interrupt a long-running one.
        execution = sb.commands.run("sleep 300", opts=RunCommandOpts(background=True))
        sleeper = execution.id
        check(bool(sleeper), "sleep command has no id")
        eq(sb.commands.get_command_status(sleeper).running, True, "sleep running")
        sb.commands.interrupt(sleeper)
        wait_until(
            lambda: sb.commands.get_command_status(sleeper).running is False,
            5,
            "interrupted command to stop",
        )


def test_sessions() -> None:
    with new_sandbox() as sb:
        session = sb.commands.create_session()
        check(bool(session), "empty session id")
        first = sb.commands.run_in_session(session, "cd /tmp && export A=1")
        eq(first.exit_code, 0, "session setup exit code")
        second = sb.commands.run_in_session(session, "pwd; echo $A")
        eq(second.text.splitlines(), ["/tmp", "1"], "session state")
        # A session keeps going after a failing command, with its exit code reported.
        failed = sb.commands.run_in_session(session, "ls /nonexistent")
        eq(failed.exit_code, 2, "failing run exit code")
        check("nonexistent" in stream_text(failed.logs.stderr), f"stderr {failed.logs.stderr}")
        eq(sb.commands.run_in_session(session, "echo $A").text, "1", "session after a failure")
        sb.commands.delete_session(session)
        expect_error(
            lambda: sb.commands.run_in_session(session, "true"), "run in a deleted session"
        )

        # set_env persists for later commands and new sessions.
        sb.commands.set_env("GREETING2", "hello there")
        sb.commands.set_env("QUOTED", "it's \"here\"")
        eq(sh(sb, 'echo "$GREETING2"'), "hello there", "set_env in a command")
        eq(sh(sb, 'echo "$QUOTED"'), "it's \"here\"", "set_env with quotes")
        later = sb.commands.create_session()
        eq(sb.commands.run_in_session(later, 'echo "$GREETING2"').text, "hello there", "set_env in a session")
        sb.commands.delete_session(later)


def test_files() -> None:
    base = "/tmp/fs-e2e"
    with new_sandbox() as sb:
        fs = sb.files
        fs.create_directories(
            [WriteEntry(path=base, mode=755), WriteEntry(path=f"{base}/sub", mode=755)]
        )
        eq(fs.get_file_info([base])[base].mode, 755, "directory mode")

        small = bytes(range(256))
        big = os.urandom(1 << 20)
        fs.write_files(
            [
                WriteEntry(path=f"{base}/a.txt", data="hello world\n", mode=644),
                WriteEntry(path=f"{base}/b.bin", data=small, mode=644),
                WriteEntry(path=f"{base}/sub/c.txt", data="nested\n", mode=644),
            ]
        )
        fs.write_file(f"{base}/big.bin", big, mode=644)

        eq(fs.read_file(f"{base}/a.txt"), "hello world\n", "text round trip")
        eq(fs.read_bytes(f"{base}/b.bin"), small, "bytes round trip")
        check(fs.read_bytes(f"{base}/big.bin") == big, "1 MiB round trip differs")
        eq(fs.read_bytes(f"{base}/big.bin", range_header="bytes=0-4"), big[:5], "range read")
        eq(fs.read_file(f"{base}/a.txt", range_header="bytes=0-4"), "hello", "text range read")

        infos = fs.get_file_info([f"{base}/a.txt", f"{base}/big.bin"])
        eq(infos[f"{base}/a.txt"].size, 12, "a.txt size")
        eq(infos[f"{base}/a.txt"].mode, 644, "a.txt mode")
        eq(infos[f"{base}/big.bin"].size, 1 << 20, "big.bin size")

        shallow = {e.path for e in fs.list_directory(DirectoryListEntry(path=base, depth=1))}
        eq(
            shallow,
            {f"{base}/a.txt", f"{base}/b.bin", f"{base}/big.bin", f"{base}/sub"},
            "depth-1 listing",
        )
        deep = {e.path for e in fs.list_directory(DirectoryListEntry(path=base, depth=2))}
        eq(deep, shallow | {f"{base}/sub/c.txt"}, "depth-2 listing")

        fs.set_permissions([SetPermissionEntry(path=f"{base}/a.txt", mode=600)])
        eq(fs.get_file_info([f"{base}/a.txt"])[f"{base}/a.txt"].mode, 600, "mode after chmod")

        fs.move_files([MoveEntry(src=f"{base}/b.bin", dest=f"{base}/sub/moved.bin")])
        eq(fs.read_bytes(f"{base}/sub/moved.bin"), small, "moved file content")
        expect_error(lambda: fs.get_file_info([f"{base}/b.bin"]), "info of the move source")

        fs.write_file(f"{base}/r.txt", "keep old text\n", mode=644)
        fs.replace_contents(
            [ContentReplaceEntry(path=f"{base}/r.txt", old_content="old", new_content="new")]
        )
        eq(fs.read_file(f"{base}/r.txt"), "keep new text\n", "replaced content")

        found = {e.path for e in fs.search(SearchEntry(path=base, pattern="*.txt"))}
        for path in (f"{base}/a.txt", f"{base}/r.txt"):
            check(path in found, f"search *.txt misses {path}: {sorted(found)}")
        check(
            not any(p.endswith(".bin") for p in found), f"search *.txt found {sorted(found)}"
        )

        fs.delete_files([f"{base}/a.txt"])
        expect_error(lambda: fs.get_file_info([f"{base}/a.txt"]), "info of a deleted file")
        fs.delete_directories([base])
        expect_error(lambda: fs.get_file_info([base]), "info of a deleted directory")


def test_endpoints() -> None:
    with new_sandbox() as sb:
        sb.files.write_file("/tmp/index.html", "<h1>warren e2e</h1>\n", mode=644)
        server = sb.commands.run(
            "python3 -m http.server 8000 --directory /tmp",
            opts=RunCommandOpts(background=True),
        )
        check(bool(server.id), "http.server command has no id")

        endpoint = sb.get_endpoint(8000)
        check(bool(endpoint.endpoint), "empty endpoint for port 8000")
        url = f"http://{endpoint.endpoint}/index.html"
        last: object = None
        deadline = time.monotonic() + 10
        while True:
            try:
                response = httpx.get(url, headers=endpoint.headers, timeout=5)
                last = response.status_code
                if response.status_code == 200:
                    break
            except httpx.HTTPError as e:
                last = e
            check(time.monotonic() < deadline, f"GET {url} never answered 200: {last!r}")
            time.sleep(0.2)
        check("warren e2e" in response.text, f"unexpected body {response.text!r}")
        # The endpoint needs its token: without the headers, 401.
        eq(httpx.get(url, timeout=5).status_code, 401, "port endpoint without its headers")

        # A signed endpoint is a link that needs no header, until it expires.
        signed = sb.get_signed_endpoint(8000, int(time.time()) + 300)
        signed_url = f"http://{signed.endpoint}/index.html"
        response = httpx.get(signed_url, timeout=5)
        eq(response.status_code, 200, f"GET {signed_url}")
        check("warren e2e" in response.text, f"unexpected signed body {response.text!r}")

        execd = sb.get_endpoint(EXECD_PORT)
        check(bool(execd.endpoint), "empty endpoint for the execd port")
        eq(sb.is_healthy(), True, "is_healthy")

        metrics = sb.get_metrics()
        check(metrics.cpu_count > 0, f"cpu_count {metrics.cpu_count}")
        check(metrics.memory_total_in_mib > 0, f"memory_total_in_mib {metrics.memory_total_in_mib}")


def test_manager() -> None:
    run = secrets.token_hex(4)
    with contextlib.ExitStack() as stack, manager() as mgr:
        boxes = []
        for i in range(3):
            sb = create(run=run, extra_metadata={"idx": str(i)})
            stack.callback(destroy, sb)
            boxes.append(sb)
        ids = {sb.id for sb in boxes}

        def listed(**filter_args) -> list[str]:
            page = mgr.list_sandbox_infos(SandboxFilter(**filter_args))
            return [info.id for info in page.sandbox_infos]

        eq(set(listed(metadata={"run": run})), ids, "filter by run")
        eq(listed(metadata={"run": run, "idx": "1"}), [boxes[1].id], "filter by run and idx")
        eq(set(listed(states=["Running"], metadata={"run": run})), ids, "filter Running")
        running = set(listed(states=["Running"]))
        check(ids <= running, "states=[Running] without metadata misses our sandboxes")

        first = mgr.list_sandbox_infos(SandboxFilter(metadata={"run": run}, page_size=2, page=1))
        eq(len(first.sandbox_infos), 2, "page 1 size")
        eq(first.pagination.has_next_page, True, "page 1 has_next_page")
        eq(first.pagination.total_items, 3, "total_items")
        second = mgr.list_sandbox_infos(SandboxFilter(metadata={"run": run}, page_size=2, page=2))
        eq(len(second.sandbox_infos), 1, "page 2 size")
        eq(second.pagination.has_next_page, False, "page 2 has_next_page")
        paged = {i.id for i in first.sandbox_infos + second.sandbox_infos}
        eq(paged, ids, "pages together")

        patched = mgr.patch_sandbox_metadata(boxes[0].id, {"owner": "e2e", "idx": None})
        eq(patched.metadata, {"suite": SUITE, "run": run, "owner": "e2e"}, "patched metadata")
        eq(boxes[0].get_info().metadata, patched.metadata, "metadata after patch")
        patched = boxes[2].patch_metadata({"idx": "two"})
        eq((patched.metadata or {}).get("idx"), "two", "sandbox.patch_metadata")


def test_pause_resume() -> None:
    sb = create()
    resumed: SandboxSync | None = None
    try:
        sb.files.write_file("/tmp/state.txt", "kept\n", mode=644)
        sb.pause()
        wait_until(lambda: sb.get_info().status.state == "Paused", 10, "state Paused")

        outcome, value = run_with_deadline(lambda: sb.commands.run("echo paused"), 15)
        check(
            outcome == "raised",
            f"a command on a paused sandbox should fail, it {outcome}: {value!r}",
        )

        resumed = SandboxSync.resume(sb.id, connection_config=CONFIG)
        LIVE[resumed.id] = resumed
        eq(resumed.get_info().status.state, "Running", "state after resume")
        eq(sh(resumed, "echo back"), "back", "command after resume")
        eq(resumed.files.read_file("/tmp/state.txt"), "kept\n", "file kept across pause")
    finally:
        destroy(resumed or sb)
        sb.close()


def test_renew() -> None:
    with new_sandbox() as sb:
        response = sb.renew(timedelta(minutes=30))
        check_expires_in(response.expires_at, timedelta(minutes=30), "renew response")
        check_expires_in(sb.get_info().expires_at, timedelta(minutes=30), "expires_at after renew")


def test_volumes() -> None:
    check(bool(HOST_DIR), "WARREN_OS_HOST_DIR is not set")
    host_new = os.path.join(HOST_DIR, "new.txt")
    volumes = [
        Volume(name="hostdir", host=Host(path=HOST_DIR), mount_path="/mnt/host", read_only=True),
        Volume(name="hostrw", host=Host(path=HOST_DIR), mount_path="/mnt/rw"),
    ]
    if GVISOR:
        try:
            with new_sandbox(volumes=volumes):
                pass
        except SandboxException as e:
            check("gvisor" in str(e), f"the refusal says why: {e}")
        else:
            raise AssertionError("host volumes on gVisor: expected a refusal")
        return
    with new_sandbox(volumes=volumes) as sb:
        eq(sb.files.read_file("/mnt/host/hello.txt"), "from the host\n", "read-only mount")
        eq(sh(sb, "cat /mnt/host/hello.txt"), "from the host", "cat on read-only mount")

        denied = sb.commands.run("echo nope > /mnt/host/nope.txt")
        check(denied.exit_code not in (0, None), f"write to a read-only mount: {denied}")
        check(not os.path.exists(os.path.join(HOST_DIR, "nope.txt")), "nope.txt on the host")

        try:
            sb.files.write_file("/mnt/rw/new.txt", "from the sandbox\n", mode=644)
            check(os.path.exists(host_new), "new.txt did not appear on the host")
            with open(host_new, encoding="utf-8") as f:
                eq(f.read(), "from the sandbox\n", "new.txt on the host")
            # Sandbox root is an unprivileged uid on the host (host paths are not idmapped).
            check(os.stat(host_new).st_uid != 0, "new.txt is owned by host root")
            sb.files.delete_files(["/mnt/rw/new.txt"])
            check(not os.path.exists(host_new), "new.txt still on the host after delete")
        finally:
            with contextlib.suppress(OSError):
                os.remove(host_new)


def test_snapshots() -> None:
    with new_sandbox() as sb:
        sb.files.write_file("/tmp/snap.txt", "before\n", mode=644)
        snap = sb.create_snapshot(name="e2e")
        eq(snap.sandbox_id, sb.id, "snapshot sandbox_id")
        eq(snap.name, "e2e", "snapshot name")
        eq(snap.status.state, "Ready", "snapshot state")
        sb.files.write_file("/tmp/snap.txt", "after\n", mode=644)
        with manager() as mgr:
            eq(mgr.get_snapshot(snap.id).id, snap.id, "get_snapshot")
            listed = mgr.list_snapshots(SnapshotFilter(sandbox_id=sb.id))
            eq([s.id for s in listed.snapshot_infos], [snap.id], "list_snapshots by sandbox")
            # A sandbox made from the snapshot has the files as they were then.
            with new_sandbox(image=None, snapshot_id=snap.id) as restored:
                eq(restored.files.read_file("/tmp/snap.txt"), "before\n", "restored file")
                eq(restored.get_info().status.state, "Running", "restored state")
            mgr.delete_snapshot(snap.id)
            expect_error(lambda: mgr.get_snapshot(snap.id), "get a deleted snapshot", status=(404,))


def test_server_proxy() -> None:
    """The SDK's server-proxy mode: execd calls carry the API key instead of relying on the
    endpoint's token header alone."""
    proxied = ConnectionConfigSync(
        domain=DOMAIN,
        api_key=API_KEY,
        request_timeout=timedelta(seconds=60),
        use_server_proxy=True,
    )
    sb = SandboxSync.create(
        IMAGE,
        metadata={"suite": SUITE, "run": RUN},
        connection_config=proxied,
        timeout=timedelta(minutes=10),
    )
    LIVE[sb.id] = sb
    try:
        eq(sb.commands.run("echo via proxy").logs.stdout[0].text, "via proxy\n", "command")
        sb.files.write_file("/tmp/proxied.txt", "proxied", mode=644)
        eq(sb.files.read_file("/tmp/proxied.txt"), "proxied", "file round trip")
    finally:
        destroy(sb)


def test_kill() -> None:
    run = secrets.token_hex(4)
    sb = create(run=run)
    try:
        sb.kill()
        expect_error(sb.get_info, "get_info after kill", status=(404,))
        with manager() as mgr:
            infos = mgr.list_sandbox_infos(SandboxFilter(metadata={"run": run}))
        eq([i.id for i in infos.sandbox_infos], [], "list after kill")
    finally:
        destroy(sb)


def test_errors() -> None:
    try:
        sb = SandboxSync.create(
            "no/such-image:latest",
            metadata={"suite": SUITE, "run": RUN},
            connection_config=CONFIG,
        )
    except SandboxApiException as e:
        eq(e.status_code, 404, "status for a missing image")
        # The SDK parses no 404 body for a create, but keeps the raw one.
        body = json.loads(e.response_body or b"{}")
        check({"code", "message"} <= body.keys(), f"404 body is not {{code, message}}: {body}")
    else:
        LIVE[sb.id] = sb
        destroy(sb)
        raise AssertionError("creating from a missing image succeeded")

    missing = f"no-such-sandbox-{secrets.token_hex(4)}"
    with manager() as mgr:
        expect_error(lambda: mgr.get_sandbox_info(missing), "get_info of a made-up id", (404,))


TESTS = [
    test_create_with_spec,
    test_commands,
    test_background_commands,
    test_sessions,
    test_files,
    test_endpoints,
    test_manager,
    test_pause_resume,
    test_renew,
    test_volumes,
    test_snapshots,
    test_server_proxy,
    test_kill,
    test_errors,
]


# --------------------------------------------------------------------------
# Authentication checks (raw HTTP), run with `python sdk_e2e.py auth`
# --------------------------------------------------------------------------


def auth_missing_key() -> None:
    response = httpx.get(f"{CONFIG.get_base_url()}/sandboxes", timeout=10)
    eq(response.status_code, 401, "status without a key")
    body = response.json()
    check(
        isinstance(body.get("code"), str) and isinstance(body.get("message"), str),
        f"401 body is not {{code, message}}: {body!r}",
    )


def auth_wrong_key() -> None:
    response = httpx.get(
        f"{CONFIG.get_base_url()}/sandboxes",
        headers={"OPEN-SANDBOX-API-KEY": "wrong-" + secrets.token_hex(8)},
        timeout=10,
    )
    eq(response.status_code, 401, "status with a wrong key")


def auth_endpoint_tokens() -> None:
    with new_sandbox() as a, new_sandbox() as b:
        endpoint_a = a.get_endpoint(EXECD_PORT)
        endpoint_b = b.get_endpoint(EXECD_PORT)
        check(bool(endpoint_a.headers), "endpoint carries no headers (no token)")
        url_b = f"http://{endpoint_b.endpoint}/ping"

        crossed = httpx.get(url_b, headers=endpoint_a.headers, timeout=10)
        check(
            crossed.status_code in (401, 403),
            f"B's endpoint with A's token answered {crossed.status_code}",
        )
        anonymous = httpx.get(url_b, timeout=10)
        check(
            anonymous.status_code in (401, 403),
            f"B's endpoint without a token answered {anonymous.status_code}",
        )
        own = httpx.get(url_b, headers=endpoint_b.headers, timeout=10)
        eq(own.status_code, 200, "B's endpoint with B's token")


def auth_request_id() -> None:
    response = httpx.get(
        f"{CONFIG.get_base_url()}/sandboxes/no-such-sandbox-{secrets.token_hex(4)}",
        headers={"OPEN-SANDBOX-API-KEY": API_KEY, "X-Request-ID": "abc"},
        timeout=10,
    )
    eq(response.status_code, 404, "status for a missing sandbox")
    eq(response.headers.get("x-request-id"), "abc", "echoed x-request-id")


AUTH_TESTS = [auth_missing_key, auth_wrong_key, auth_endpoint_tokens, auth_request_id]


def auth_checks() -> bool:
    """Run the authentication checks; True when all pass."""
    return run_tests(AUTH_TESTS)


# --------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------


def run_tests(tests: list[Callable[[], None]]) -> bool:
    all_ok = True
    for test in tests:
        name = test.__name__.removeprefix("test_")
        started = time.monotonic()
        try:
            test()
        except Exception:  # noqa: BLE001 - every failure is reported, then we go on
            all_ok = False
            print(f"FAIL {name}: {traceback.format_exc()}", flush=True)
        else:
            print(f"ok {name} ({time.monotonic() - started:.1f} s)", flush=True)
    return all_ok


def kill_leftovers() -> None:
    """Kill every sandbox of this run that a test failed to clean up."""
    ids = set(LIVE)
    try:
        with manager() as mgr:
            for run in RUNS:
                page = mgr.list_sandbox_infos(
                    SandboxFilter(metadata={"suite": SUITE, "run": run})
                )
                ids.update(info.id for info in page.sandbox_infos)
            for sandbox_id in ids:
                try:
                    mgr.kill_sandbox(sandbox_id)
                except SandboxException as e:
                    if getattr(e, "status_code", None) != 404:
                        print(f"warning: could not kill sandbox {sandbox_id}: {e}", flush=True)
    except Exception as e:  # noqa: BLE001 - best effort, but say so
        print(f"warning: cleanup failed, sandboxes may be left: {sorted(ids)}: {e}", flush=True)
    for sandbox in LIVE.values():
        sandbox.close()
    LIVE.clear()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    debug = os.environ.get("SDK_E2E_DEBUG") == "1"
    # The SDK logs (with tracebacks) every error it raises, expected ones included.
    logging.getLogger("opensandbox").setLevel(logging.DEBUG if debug else logging.CRITICAL)

    if not DOMAIN:
        print("FAIL setup: OPEN_SANDBOX_DOMAIN is not set", flush=True)
        return 1
    # Streamed commands have no client-side read timeout: a server that never
    # ends a stream would hang the run, so show where instead.
    faulthandler.dump_traceback_later(float(os.environ.get("SDK_E2E_TIMEOUT", "300")), exit=True)

    selected = argv[1:]
    try:
        if selected == ["auth"]:
            ok = auth_checks()
        else:
            by_name = {t.__name__.removeprefix("test_"): t for t in TESTS}
            unknown = [n for n in selected if n not in by_name]
            if unknown:
                print(f"FAIL setup: unknown tests {unknown}; known: {list(by_name)}", flush=True)
                return 1
            ok = run_tests([by_name[n] for n in selected] if selected else TESTS)
    finally:
        kill_leftovers()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
