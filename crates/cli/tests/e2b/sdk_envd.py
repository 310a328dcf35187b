"""E2B's Python SDK (PyPI ``e2b``, pinned in .ci/sdk-venvs) against Warren's envd side, the
way an agent developer uses it: commands (foreground, streamed, failing, envs and cwd, root,
timeouts, background, list, connect, kill, stdin, odd output), PTYs (create, input, resize,
kill, connect), files (text, bytes and streams, several at once, the upload modes, gzip,
listing with depth, info, rename, remove, make_dir, errors, metadata), directory watches
(the sync SDK's polling watcher), signed URLs used with plain httpx, envd's own auth,
is_running and a command cut by killing its sandbox; then a few of the same with
``AsyncSandbox``.

Run by crates/cli/tests/e2b.rs with E2B_API_URL and E2B_SANDBOX_URL (both the Warren
listener) and E2B_API_KEY. ``sdk_envd.py NAME...`` runs only those tests. Each test prints
``ok <name>`` or ``FAIL <name>: <traceback>``; every sandbox made is killed; the exit status
is 1 if any test failed.
"""

import asyncio
import hashlib
import io
import os
import secrets
import sys
import threading
import time
import urllib.parse
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable, Optional

import httpx
from e2b import (
    AsyncSandbox,
    CommandExitException,
    FileType,
    FilesystemEventType,
    PtySize,
    Sandbox,
    SandboxException,
    TimeoutException,
)
from e2b.exceptions import (
    FileNotFoundException,
    InvalidArgumentException,
    NotFoundException,
    SandboxNotRunningException,
)
from harness import run

# The SDK sends every envd call (RPCs, /files, /health) to E2B_SANDBOX_URL when it is set.
os.environ.setdefault("E2B_SANDBOX_URL", os.environ.get("E2B_API_URL", ""))
SANDBOX_URL = os.environ["E2B_SANDBOX_URL"].rstrip("/")
HOME = "/home/user"
RUN = secrets.token_hex(4)
# The runtime the daemon's sandboxes use (Warren's test sets it): gVisor has no extended
# attributes, so file metadata is refused there, typed.
XATTRS = os.environ.get("WARREN_RUNTIME", "native") != "gvisor"
MADE: list[str] = []


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


def eq(actual, expected, what: str) -> None:
    check(actual == expected, f"{what}: expected {expected!r}, got {actual!r}")


def raises(kinds, fn: Callable, what: str) -> BaseException:
    """The exception ``fn`` raised, which must be one of ``kinds``."""
    try:
        fn()
    except kinds as e:  # noqa: B030 - a tuple or a class
        return e
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"{what}: expected {kinds}, got {type(e).__name__}: {e}") from e
    raise AssertionError(f"{what}: expected {kinds}, nothing was raised")


def create(**kw) -> Sandbox:
    meta = {"run": RUN, **kw.pop("metadata", {})}
    sb = Sandbox.create(metadata=meta, **kw)
    MADE.append(sb.sandbox_id)
    return sb


async def acreate(**kw) -> AsyncSandbox:
    meta = {"run": RUN, **kw.pop("metadata", {})}
    sb = await AsyncSandbox.create(metadata=meta, **kw)
    MADE.append(sb.sandbox_id)
    return sb


class Waiter(threading.Thread):
    """Runs ``fn`` on a daemon thread so a call that never returns fails the test instead
    of hanging the run."""

    def __init__(self, fn: Callable):
        super().__init__(daemon=True)
        self.fn = fn
        self.result = None
        self.error: Optional[BaseException] = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            self.error = e

    def done(self, timeout: float, what: str) -> "Waiter":
        self.join(timeout)
        check(not self.is_alive(), f"{what}: still running after {timeout} s")
        return self


def within(timeout: float, fn: Callable, what: str):
    """``fn()``'s result; fails if it takes longer than ``timeout`` (a "does not hang"
    bound, never a performance claim)."""
    w = Waiter(fn).done(timeout, what)
    if w.error is not None:
        raise w.error
    return w.result


def until(cond: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


class Collector:
    """Thread-safe sink for PTY output."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.lock = threading.Lock()

    def __call__(self, data: bytes) -> None:
        with self.lock:
            self.buf.extend(data)

    def text(self) -> str:
        with self.lock:
            return bytes(self.buf).decode("utf-8", "replace")

    def wait_for(self, needle: str, timeout: float = 15.0) -> None:
        try:
            until(lambda: needle in self.text(), f"{needle!r} in the PTY output", timeout)
        except AssertionError as e:
            raise AssertionError(f"{e}; output so far: {self.text()!r}") from None


def pids(sb: Sandbox) -> list[int]:
    return [p.pid for p in sb.commands.list()]


# --- commands ---------------------------------------------------------------------------


def test_run_foreground() -> None:
    sb = create()
    r = sb.commands.run("echo out; echo err >&2")
    eq(r.stdout, "out\n", "stdout")
    eq(r.stderr, "err\n", "stderr")
    eq(r.exit_code, 0, "exit code")
    eq(r.error, None, "no error on success")
    # The default user, their home and the working directory.
    r = sb.commands.run('whoami; echo "$HOME"; pwd; id -u')
    eq(r.stdout.split(), ["user", HOME, HOME, "1000"], "default user, HOME, cwd, uid")
    # stdin is closed unless asked for: `cat` ends at once instead of waiting.
    eq(within(30, lambda: sb.commands.run("cat", timeout=20), "cat without stdin").stdout, "", "cat")
    # A login bash runs the command: pipes, && and the exit status of the last one.
    eq(sb.commands.run("printf 'a\\nb\\n' | wc -l && true").stdout.strip(), "2", "shell syntax")


def test_run_streaming() -> None:
    sb = create()
    out: list[str] = []
    err: list[str] = []
    r = sb.commands.run(
        "for i in 1 2 3; do echo $i; echo e$i >&2; sleep 0.3; done",
        on_stdout=out.append,
        on_stderr=err.append,
    )
    eq("".join(out), "1\n2\n3\n", "streamed stdout")
    eq("".join(err), "e1\ne2\ne3\n", "streamed stderr")
    eq(r.stdout, "1\n2\n3\n", "the result still holds all of stdout")
    check(len(out) >= 2 and len(err) >= 2, f"output came in one piece: {out} {err}")
    # Output arrives while the command runs: it waits for a file the stdout callback
    # writes on seeing the first line, which would deadlock (until `timeout`) if the
    # server held output back until the command ended.
    gate = f"/tmp/gate-{secrets.token_hex(3)}"
    seen: list[str] = []

    def on_line(s: str) -> None:
        seen.append(s)
        if "waiting\n" in "".join(seen) and not sb.files.exists(gate):
            sb.files.write(gate, "go")

    r = sb.commands.run(
        f"echo waiting; while [ ! -f {gate} ]; do sleep 0.05; done; echo released",
        on_stdout=on_line,
        timeout=30,
    )
    eq(r.stdout, "waiting\nreleased\n", "gated command output")


def test_run_exit_code() -> None:
    sb = create()
    e = raises(CommandExitException, lambda: sb.commands.run("echo out; echo oops >&2; exit 3"), "exit 3")
    eq(e.exit_code, 3, "exit code")
    eq(e.stdout, "out\n", "stdout on the exception")
    eq(e.stderr, "oops\n", "stderr on the exception")
    check(isinstance(e, SandboxException), "CommandExitException is a SandboxException")
    e = raises(CommandExitException, lambda: sb.commands.run("no-such-command-here"), "unknown command")
    eq(e.exit_code, 127, "command not found")
    check("not found" in e.stderr, f"bash's message: {e.stderr!r}")


def test_run_envs_cwd() -> None:
    sb = create(envs={"SB_LEVEL": "from-create", "BOTH": "sandbox"})
    r = sb.commands.run('echo "$FOO|$SB_LEVEL|$BOTH"; pwd', envs={"FOO": "bar baz", "BOTH": "command"}, cwd="/tmp")
    eq(r.stdout, "bar baz|from-create|command\n/tmp\n", "envs (command over sandbox) and cwd")
    r = sb.commands.run('echo "$FOO|$SB_LEVEL"; pwd')
    eq(r.stdout, f"|from-create\n{HOME}\n", "a command's envs and cwd do not stick")
    sb.files.make_dir("/tmp/work dir")
    eq(sb.commands.run("pwd", cwd="/tmp/work dir").stdout, "/tmp/work dir\n", "cwd with a space")


def test_run_as_root() -> None:
    sb = create()
    sb.commands.run("chmod 700 /root", user="root")
    r = sb.commands.run('whoami; echo "$HOME"; id -u', user="root")
    eq(r.stdout.split(), ["root", "/root", "0"], "root")
    eq(sb.commands.run("whoami", user="user").stdout, "user\n", "explicit user")
    # Files follow the user too: relative paths are under their home, owners are theirs.
    info = sb.files.write("as-root.txt", "r", user="root")
    eq(info.path, "/root/as-root.txt", "root's relative path")
    eq(sb.files.get_info("/root/as-root.txt", user="root").owner, "root", "root's file owner")
    sb.commands.run("echo made > /tmp/root-made", user="root")
    got = sb.files.get_info("/tmp/root-made")
    eq((got.owner, got.group), ("root", "root"), "a root command's file")
    e = raises(CommandExitException, lambda: sb.commands.run("cat /root/as-root.txt"), "user reads root's file")
    check("ermission denied" in e.stderr, f"permission error: {e.stderr!r}")


def test_run_timeout() -> None:
    sb = create()
    start = time.monotonic()
    raises(TimeoutException, lambda: within(40, lambda: sb.commands.run("sleep 30", timeout=2), "sleep 30"), "timeout=2")
    check(time.monotonic() - start < 25, "the command timeout did not end the call early")
    raises(
        TimeoutException,
        lambda: within(40, lambda: sb.commands.run("sleep 30", background=True, timeout=2).wait(), "bg wait"),
        "timeout=2 on a background command's wait",
    )
    eq(sb.commands.run("echo still here").stdout, "still here\n", "the sandbox works after")


def test_background_list_kill() -> None:
    sb = create()
    mark = secrets.token_hex(4)
    h = sb.commands.run("sleep 30", background=True, envs={"MARK": mark}, cwd="/tmp")
    check(h.pid > 0, f"pid {h.pid}")
    procs = {p.pid: p for p in sb.commands.list()}
    check(h.pid in procs, f"{h.pid} not listed: {list(procs)}")
    p = procs[h.pid]
    eq(p.cmd, "/bin/bash", "listed cmd")
    eq(p.args, ["-l", "-c", "sleep 30"], "listed args")
    eq(p.envs.get("MARK"), mark, "listed envs")
    eq(p.cwd, "/tmp", "listed cwd")
    eq(p.tag, None, "no tag")
    other = sb.commands.run("sleep 30", background=True)
    check(other.pid != h.pid and other.pid in pids(sb), "a second background command")

    eq(sb.commands.kill(h.pid), True, "kill")
    w = Waiter(h.wait).done(15, "wait() on a killed command")
    check(isinstance(w.error, CommandExitException), f"a killed command's wait: {w.error!r}")
    check(w.error.exit_code != 0, f"exit code {w.error.exit_code}")
    until(lambda: h.pid not in pids(sb), "the killed command leaves the list")
    eq(sb.commands.kill(h.pid), False, "killing it again")
    eq(sb.commands.kill(999_999), False, "killing an unknown pid")

    eq(other.kill(), True, "CommandHandle.kill")
    Waiter(other.wait).done(15, "wait() after handle.kill")
    until(lambda: other.pid not in pids(sb), "the second command leaves the list")


def test_connect_running() -> None:
    sb = create()
    gate = f"/tmp/gate-{secrets.token_hex(3)}"
    h = sb.commands.run(f"echo before; while [ ! -f {gate} ]; do sleep 0.05; done; echo after", background=True)
    again = sb.commands.connect(h.pid)
    eq(again.pid, h.pid, "connected pid")
    sb.files.write(gate, "")
    r = within(20, again.wait, "wait() on a connected command")
    check(r.stdout.endswith("after\n"), f"connected output {r.stdout!r}")
    eq(r.exit_code, 0, "connected exit code")
    # The first stream got everything too.
    eq(within(20, h.wait, "wait() on the first handle").stdout, "before\nafter\n", "first handle output")
    raises(NotFoundException, lambda: sb.commands.connect(999_999), "connect to an unknown pid")

    # A disconnected handle leaves the command running; connect picks it up.
    gate2 = gate + "b"
    h = sb.commands.run(f"while [ ! -f {gate2} ]; do sleep 0.05; done; echo done", background=True)
    h.disconnect()
    check(h.pid in pids(sb), "a disconnected command keeps running")
    again = sb.commands.connect(h.pid)
    sb.files.write(gate2, "")
    eq(within(20, again.wait, "wait() after reconnecting").stdout, "done\n", "reconnected output")


def test_stdin() -> None:
    sb = create()
    h = sb.commands.run("cat", background=True, stdin=True)
    sb.commands.send_stdin(h.pid, "hello\n")
    h.send_stdin(b"w\xc3\xb6rld\n")
    sb.commands.close_stdin(h.pid)
    eq(within(20, h.wait, "cat after close_stdin").stdout, "hello\nwörld\n", "echoed stdin")
    # Input reaches the command as it is sent, not only at EOF.
    h = sb.commands.run('read line; echo "got:$line"', background=True, stdin=True)
    h.send_stdin("abc\n")
    eq(within(20, h.wait, "read a line").stdout, "got:abc\n", "line read before EOF")
    # Closing stdin through the handle.
    h = sb.commands.run("wc -c", background=True, stdin=True)
    h.send_stdin("12345")
    h.close_stdin()
    eq(within(20, h.wait, "wc after handle.close_stdin").stdout.strip(), "5", "byte count")


def test_stdin_stream() -> None:
    sb = create()
    h = sb.commands.run("cat", background=True, stdin=True)
    sb.commands.stream_input(h.pid, ["a", b"b", "c\n", "ü\n"])
    sb.commands.close_stdin(h.pid)
    eq(within(20, h.wait, "cat after stream_input").stdout, "abc\nü\n", "streamed stdin")


def test_output_encoding() -> None:
    sb = create()
    eq(sb.commands.run("echo 'héllo ✓ 日本'").stdout, "héllo ✓ 日本\n", "unicode stdout")
    eq(sb.commands.run("echo 'ошибка' >&2").stderr, "ошибка\n", "unicode stderr")
    eq(sb.commands.run("printf '\\377\\376 ok\\n'").stdout, "\ufffd\ufffd ok\n", "invalid UTF-8 is replaced")
    # A character split across two writes still decodes whole.
    split = (
        "python3 -c \"import sys,time; b='\\u2713'.encode(); sys.stdout.buffer.write(b[:2]); "
        "sys.stdout.flush(); time.sleep(0.3); sys.stdout.buffer.write(b[2:] + b'\\n')\""
    )
    eq(sb.commands.run(split).stdout, "✓\n", "split multibyte character")
    big = sb.commands.run("head -c 1000000 /dev/zero | tr '\\0' a").stdout
    eq(len(big), 1_000_000, "1 MB of output")
    check(set(big) == {"a"}, "1 MB of output is intact")
    r = sb.commands.run("head -c 4096 /dev/urandom")
    check(len(r.stdout) > 0, "random bytes arrive (decoded with replacement)")


# --- pty ----------------------------------------------------------------------------------


def test_pty() -> None:
    sb = create()
    out = Collector()
    term = sb.pty.create(PtySize(rows=24, cols=80), envs={"FOO": "bar"}, cwd="/tmp")
    check(term.pid > 0, "pty pid")
    w = Waiter(lambda: term.wait(on_pty=out))
    sb.pty.send_stdin(term.pid, b"echo pty-$((6*7)) $FOO $PWD $(whoami)\n")
    out.wait_for("pty-42 bar /tmp user")
    sb.pty.send_stdin(term.pid, b"stty size; tty; echo $TERM\n")
    out.wait_for("24 80")
    out.wait_for("xterm-256color")
    check("/dev/pts/" in out.text(), f"a real tty: {out.text()!r}")
    sb.pty.resize(term.pid, PtySize(rows=30, cols=100))
    sb.pty.send_stdin(term.pid, b"stty size\n")
    out.wait_for("30 100")
    check(term.pid in pids(sb), "commands.list() shows the PTY")
    sb.pty.send_stdin(term.pid, b"exit\n")
    w.done(20, "the PTY's wait() after exit")
    check(w.error is None, f"pty wait: {w.error!r}")
    eq(w.result.exit_code, 0, "pty exit code")
    # As root.
    out = Collector()
    term = sb.pty.create(PtySize(rows=24, cols=80), user="root")
    w = Waiter(lambda: term.wait(on_pty=out))
    sb.pty.send_stdin(term.pid, b"echo i-am-$(whoami)\nexit\n")
    w.done(20, "root PTY")
    check("i-am-root" in out.text(), f"root pty output {out.text()!r}")


def test_pty_kill() -> None:
    sb = create()
    term = sb.pty.create(PtySize(rows=24, cols=80))
    w = Waiter(term.wait)
    eq(sb.pty.kill(term.pid), True, "pty.kill")
    w.done(15, "wait() on a killed PTY")
    check(isinstance(w.error, CommandExitException), f"killed PTY's wait: {w.error!r}")
    until(lambda: term.pid not in pids(sb), "the killed PTY leaves the list")
    eq(sb.pty.kill(term.pid), False, "killing it again")


def test_pty_connect() -> None:
    sb = create()
    term = sb.pty.create(PtySize(rows=24, cols=80), envs={"FOO": "connected"})
    pid = term.pid
    term.disconnect()
    check(pid in pids(sb), "a disconnected PTY keeps running")
    again = sb.pty.connect(pid)
    eq(again.pid, pid, "connected pid")
    out = Collector()
    w = Waiter(lambda: again.wait(on_pty=out))
    sb.pty.send_stdin(pid, b"echo again-$FOO\n")
    out.wait_for("again-connected")
    sb.pty.send_stdin(pid, b"exit\n")
    w.done(20, "the reconnected PTY's wait()")
    check(w.error is None, f"reconnected wait: {w.error!r}")
    eq(w.result.exit_code, 0, "exit code")


# --- files --------------------------------------------------------------------------------


def test_files_read_write() -> None:
    sb = create()
    info = sb.files.write("hello.txt", "héllo\n")
    eq((info.name, info.path, info.type), ("hello.txt", f"{HOME}/hello.txt", FileType.FILE), "write info")
    eq(sb.files.read("hello.txt"), "héllo\n", "text")
    eq(sb.files.read(f"{HOME}/hello.txt", format="bytes"), bytearray("héllo\n".encode()), "bytes")
    eq(sb.commands.run("cat hello.txt").stdout, "héllo\n", "a command sees it")
    sb.files.write("hello.txt", "x")
    eq(sb.files.read("hello.txt"), "x", "overwrite truncates")

    blob = os.urandom(1 << 20)
    sb.files.write("/tmp/blob.bin", blob)
    eq(bytes(sb.files.read("/tmp/blob.bin", format="bytes")), blob, "1 MiB of random bytes")
    with sb.files.read("/tmp/blob.bin", format="stream") as stream:
        streamed = b"".join(stream)
    eq(hashlib.sha256(streamed).hexdigest(), hashlib.sha256(blob).hexdigest(), "streamed read")
    eq(sb.commands.run("sha256sum /tmp/blob.bin").stdout.split()[0], hashlib.sha256(blob).hexdigest(), "on disk")

    eq(sb.files.write("/tmp/a/b/c/deep.txt", "deep").path, "/tmp/a/b/c/deep.txt", "parents made")
    eq(sb.files.get_info("/tmp/a/b").type, FileType.DIR, "a made parent is a directory")
    sb.files.write("/tmp/empty", "")
    eq(sb.files.read("/tmp/empty"), "", "empty file")
    eq(sb.files.get_info("/tmp/empty").size, 0, "empty size")
    eq(sb.files.write("/tmp/ünï cödé.txt", "u").path, "/tmp/ünï cödé.txt", "unicode path")
    eq(sb.files.read("/tmp/ünï cödé.txt"), "u", "unicode path read")


def test_files_write_files() -> None:
    sb = create()
    entries = [
        {"path": "multi/one.txt", "data": "1"},
        {"path": "/tmp/multi/two.bin", "data": b"\x00\x01\x02\xff"},
        {"path": "multi/deep/three.txt", "data": "three ✓"},
    ]
    infos = sb.files.write_files(entries)
    want = [f"{HOME}/multi/one.txt", "/tmp/multi/two.bin", f"{HOME}/multi/deep/three.txt"]
    eq(sorted(i.path for i in infos), sorted(want), "written paths")
    check(all(i.type == FileType.FILE for i in infos), f"types {infos}")
    eq(sb.files.read("multi/one.txt"), "1", "one")
    eq(bytes(sb.files.read("/tmp/multi/two.bin", format="bytes")), b"\x00\x01\x02\xff", "two")
    eq(sb.files.read("multi/deep/three.txt"), "three ✓", "three")
    eq(sb.files.write_files([]), [], "nothing to write")
    one = sb.files.write_files([{"path": "/tmp/single.txt", "data": "s"}])
    eq([i.path for i in one], ["/tmp/single.txt"], "a single entry")
    # The same list as octet-stream uploads (one request each).
    infos = sb.files.write_files(
        [{"path": "/tmp/oct/1.txt", "data": "o1"}, {"path": "/tmp/oct/2.txt", "data": "o2"}], use_octet_stream=True
    )
    eq(sorted(i.path for i in infos), ["/tmp/oct/1.txt", "/tmp/oct/2.txt"], "octet-stream paths")
    eq(sb.files.read("/tmp/oct/2.txt"), "o2", "octet-stream content")


def test_files_upload_modes() -> None:
    sb = create()
    for mode, kw in [("octet", {"use_octet_stream": True}), ("multipart", {"use_octet_stream": False})]:
        path = f"/tmp/modes/{mode}.txt"
        eq(sb.files.write(path, f"via {mode} ✓", **kw).path, path, f"{mode} path")
        eq(sb.files.read(path), f"via {mode} ✓", f"{mode} content")
    blob = os.urandom(300_000)
    # A binary file object goes as a streamed octet-stream body.
    sb.files.write("/tmp/modes/filelike.bin", io.BytesIO(blob))
    eq(bytes(sb.files.read("/tmp/modes/filelike.bin", format="bytes")), blob, "file object")
    sb.files.write("/tmp/modes/text-io.txt", io.StringIO("text io ✓"))
    eq(sb.files.read("/tmp/modes/text-io.txt"), "text io ✓", "text file object")

    # An iterable of chunks goes as a chunked octet-stream body.
    def chunks() -> Iterable[bytes]:
        for i in range(0, len(blob), 16384):
            yield blob[i : i + 16384]

    sb.files.write("/tmp/modes/chunks.bin", chunks())
    eq(bytes(sb.files.read("/tmp/modes/chunks.bin", format="bytes")), blob, "chunked upload")
    # A binary file object in a multipart body.
    sb.files.write_files([{"path": "/tmp/modes/mp.bin", "data": io.BytesIO(blob)}], use_octet_stream=False)
    eq(bytes(sb.files.read("/tmp/modes/mp.bin", format="bytes")), blob, "multipart file object")


def test_files_gzip() -> None:
    sb = create()
    text = "gzip me ✓\n" * 20_000
    eq(sb.files.write("/tmp/gz.txt", text, gzip=True).path, "/tmp/gz.txt", "gzip upload")
    eq(sb.commands.run("wc -c < /tmp/gz.txt").stdout.strip(), str(len(text.encode())), "stored uncompressed")
    eq(sb.files.read("/tmp/gz.txt"), text, "plain read of a gzip upload")
    eq(sb.files.read("/tmp/gz.txt", gzip=True), text, "gzip read")
    eq(bytes(sb.files.read("/tmp/gz.txt", format="bytes", gzip=True)), text.encode(), "gzip bytes read")
    with sb.files.read("/tmp/gz.txt", format="stream", gzip=True) as stream:
        eq(b"".join(stream), text.encode(), "gzip stream read")
    blob = os.urandom(200_000)
    sb.files.write("/tmp/gz.bin", io.BytesIO(blob), gzip=True)
    eq(bytes(sb.files.read("/tmp/gz.bin", format="bytes", gzip=True)), blob, "gzip file object round trip")
    infos = sb.files.write_files(
        [{"path": "/tmp/gzm/1.txt", "data": "one"}, {"path": "/tmp/gzm/2.txt", "data": "two"}], gzip=True
    )
    eq(len(infos), 2, "gzip write_files")
    eq(sb.files.read("/tmp/gzm/2.txt"), "two", "gzip write_files content")
    # The server compresses when asked (checked below the SDK, which decodes either way).
    headers = dict(sb.connection_config.sandbox_headers)
    r = httpx.get(f"{SANDBOX_URL}/files", params={"path": "/tmp/gz.txt"}, headers={**headers, "Accept-Encoding": "gzip"})
    eq(r.status_code, 200, "raw gzip read")
    eq(r.headers.get("content-encoding"), "gzip", "Content-Encoding of a gzip read")
    eq(r.text, text, "raw gzip read decodes")
    r = httpx.get(f"{SANDBOX_URL}/files", params={"path": "/tmp/gz.txt"}, headers={**headers, "Accept-Encoding": "identity"})
    check(r.headers.get("content-encoding") in (None, "identity"), f"identity read was {r.headers.get('content-encoding')}")
    eq(r.text, text, "identity read")


def test_files_list_depth() -> None:
    sb = create()
    base = f"tree-{secrets.token_hex(3)}"
    for d in ["sub1/sub1_1", "sub1/sub1_2", "sub2/sub2_1", "sub2/sub2_2"]:
        sb.files.make_dir(f"{base}/{d}")
    sb.files.write(f"{base}/file1.txt", "Hello, world!")
    root = f"{HOME}/{base}"
    top = {"file1.txt": FileType.FILE, "sub1": FileType.DIR, "sub2": FileType.DIR}
    for depth in (None, 1):
        got = sb.files.list(base, depth=depth)
        eq(sorted(e.name for e in got), sorted(top), f"names at depth {depth}")
        eq({e.name: e.type for e in got}, top, f"types at depth {depth}")
        eq(sorted(e.path for e in got), sorted(f"{root}/{n}" for n in top), f"paths at depth {depth}")
    deep = [
        "file1.txt", "sub1", "sub1/sub1_1", "sub1/sub1_2", "sub2", "sub2/sub2_1", "sub2/sub2_2",
    ]  # fmt: skip
    for depth in (2, 3):
        got = sb.files.list(base, depth=depth)
        eq(sorted(e.path for e in got), sorted(f"{root}/{p}" for p in deep), f"paths at depth {depth}")
        eq(sorted(e.name for e in got), sorted(p.rsplit("/", 1)[-1] for p in deep), f"names at depth {depth}")
    entry = next(e for e in sb.files.list(base) if e.name == "file1.txt")
    eq((entry.size, entry.owner, entry.mode), (13, "user", 0o644), "a listed file's details")
    eq(sb.files.list(f"{base}/sub1/sub1_1"), [], "an empty directory")


def test_files_info() -> None:
    sb = create()
    sb.files.write("info.txt", "test")
    i = sb.files.get_info("info.txt")
    eq((i.name, i.path, i.type, i.size), ("info.txt", f"{HOME}/info.txt", FileType.FILE, 4), "file info")
    eq((i.mode, i.permissions), (0o644, "-rw-r--r--"), "file mode")
    eq((i.owner, i.group), ("user", "user"), "file owner")
    eq(i.symlink_target, None, "no symlink target")
    eq(i.metadata, None, "no metadata")
    mtime = i.modified_time if i.modified_time.tzinfo else i.modified_time.replace(tzinfo=timezone.utc)
    check(abs(mtime - datetime.now(timezone.utc)) < timedelta(hours=1), f"modified_time {i.modified_time}")
    sb.files.make_dir("infodir")
    d = sb.files.get_info("infodir")
    eq((d.name, d.path, d.type), ("infodir", f"{HOME}/infodir", FileType.DIR), "dir info")
    eq((d.mode, d.permissions, d.owner), (0o755, "drwxr-xr-x", "user"), "dir mode and owner")
    sb.commands.run(f"chmod 600 {HOME}/info.txt && ln -s {HOME}/info.txt {HOME}/link")
    eq(sb.files.get_info("info.txt").permissions, "-rw-------", "chmod shows")
    eq(sb.files.get_info("info.txt").mode, 0o600, "chmod mode")
    link = sb.files.get_info("link")
    eq(link.type, FileType.SYMLINK, "symlink type")
    eq(link.symlink_target, f"{HOME}/info.txt", "symlink target")
    sb.files.write("/tmp/by-root", "r", user="root")
    r = sb.files.get_info("/tmp/by-root")
    eq((r.owner, r.group), ("root", "root"), "a file root wrote")


def test_files_ops() -> None:
    sb = create()
    base = f"/tmp/ops-{secrets.token_hex(3)}"
    eq(sb.files.exists(base), False, "exists before")
    eq(sb.files.make_dir(f"{base}/a/b"), True, "make_dir with parents")
    eq(sb.files.make_dir(f"{base}/a/b"), False, "make_dir of an existing directory")
    eq(sb.files.exists(f"{base}/a/b"), True, "exists after")
    sb.files.write(f"{base}/a/f.txt", "move me")
    eq(sb.files.exists(f"{base}/a/f.txt"), True, "a file exists")
    moved = sb.files.rename(f"{base}/a/f.txt", f"{base}/g.txt")
    eq((moved.name, moved.path, moved.type), ("g.txt", f"{base}/g.txt", FileType.FILE), "rename info")
    eq(sb.files.exists(f"{base}/a/f.txt"), False, "the old name is gone")
    eq(sb.files.read(f"{base}/g.txt"), "move me", "renamed content")
    eq(sb.files.rename(f"{base}/a", f"{base}/z").type, FileType.DIR, "rename a directory")
    eq(sb.files.exists(f"{base}/z/b"), True, "a renamed directory keeps its children")
    sb.files.remove(f"{base}/g.txt")
    eq(sb.files.exists(f"{base}/g.txt"), False, "removed file")
    sb.files.remove(f"{base}/z")
    eq(sb.files.exists(f"{base}/z"), False, "removed non-empty directory")
    eq(sb.files.list(base), [], "all gone")


def test_files_errors() -> None:
    sb = create()
    missing = "/tmp/definitely-missing"
    for what, fn in [
        ("read", lambda: sb.files.read(missing)),
        ("read bytes", lambda: sb.files.read(missing, format="bytes")),
        ("read stream", lambda: sb.files.read(missing, format="stream")),
        ("get_info", lambda: sb.files.get_info(missing)),
        ("list", lambda: sb.files.list(missing)),
        ("rename", lambda: sb.files.rename(missing, missing + "2")),
    ]:
        e = raises(FileNotFoundException, fn, f"{what} of a missing path")
        check(isinstance(e, NotFoundException), "FileNotFoundException is a NotFoundException")
    sb.files.make_dir("/tmp/a-dir")
    raises(SandboxException, lambda: sb.files.read("/tmp/a-dir"), "reading a directory")
    sb.files.write("/tmp/a-file", "f")
    raises(SandboxException, lambda: sb.files.list("/tmp/a-file"), "listing a file")
    # Warren's file API checks no in-sandbox permissions (a documented gap: envd's
    # `user` owns what it writes, but reads and writes are not refused as that user's).
    sb.files.write("/root/secret.txt", "s", user="root")
    eq(sb.files.read("/root/secret.txt", user="root"), "s", "root reads it")
    eq(sb.files.get_info("/root/secret.txt", user="root").owner, "root", "root owns it")


def test_files_metadata() -> None:
    sb = create()
    if not XATTRS:
        try:
            sb.files.write("/tmp/meta.txt", "m", metadata={"k": "v"})
        except InvalidArgumentException as e:
            check("extended attributes" in str(e), f"the refusal says why: {e}")
        else:
            raise AssertionError("metadata on gVisor: expected a refusal")
        check(not sb.files.exists("/tmp/meta.txt"), "a refused write leaves no file")
        return
    want = {"author": "mish", "purpose": "upload"}
    info = sb.files.write("/tmp/meta.txt", "m", metadata={"author": "mish", "Purpose": "upload"})
    eq(info.metadata, want, "metadata on the write (keys lowercased)")
    eq(sb.files.get_info("/tmp/meta.txt").metadata, want, "metadata on get_info")
    listed = next(e for e in sb.files.list("/tmp") if e.name == "meta.txt")
    eq(listed.metadata, want, "metadata on list")
    eq(sb.files.rename("/tmp/meta.txt", "/tmp/meta2.txt").metadata, want, "metadata survives a rename")
    info = sb.files.write("/tmp/meta-oct.txt", "m", metadata={"k": "v"}, use_octet_stream=True)
    eq(info.metadata, {"k": "v"}, "octet-stream metadata")
    eq(sb.files.get_info("/tmp/meta-oct.txt").metadata, {"k": "v"}, "octet-stream metadata stored")
    infos = sb.files.write_files(
        [{"path": "/tmp/mm/1.txt", "data": "1"}, {"path": "/tmp/mm/2.txt", "data": "2"}], metadata={"src": "suite"}
    )
    for i in infos:
        eq(i.metadata, {"src": "suite"}, f"write_files metadata on {i.path}")
        eq(sb.files.get_info(i.path).metadata, {"src": "suite"}, f"stored metadata on {i.path}")
    info = sb.files.write("/tmp/meta2.txt", "again")
    eq(info.metadata, None, "an overwrite without metadata")
    eq(sb.files.get_info("/tmp/meta2.txt").metadata, None, "an overwrite clears stale metadata")
    eq(sb.files.write("/tmp/plain.txt", "p").metadata, None, "no metadata")


# --- watch --------------------------------------------------------------------------------


def wait_events(handle, want: set, seen: list, timeout: float = 15.0) -> None:
    """Polls the sync watcher until every (type, name) in ``want`` has been seen."""

    def got() -> bool:
        seen.extend(handle.get_new_events())
        return want <= {(e.type, e.name) for e in seen}

    try:
        until(got, f"events {want}", timeout)
    except AssertionError as e:
        raise AssertionError(f"{e}; seen {[(ev.type.value, ev.name) for ev in seen]}") from None


def test_watch() -> None:
    sb = create()
    C, W, RM, RN = (
        FilesystemEventType.CREATE,
        FilesystemEventType.WRITE,
        FilesystemEventType.REMOVE,
        FilesystemEventType.RENAME,
    )
    base = f"/tmp/watch-{secrets.token_hex(3)}"
    sb.files.make_dir(f"{base}/sub")
    w = sb.files.watch_dir(base, recursive=True)
    seen: list = []
    sb.files.write(f"{base}/a.txt", "one")
    wait_events(w, {(C, "a.txt"), (W, "a.txt")}, seen)
    sb.files.write(f"{base}/sub/b.txt", "two")
    wait_events(w, {(C, "sub/b.txt"), (W, "sub/b.txt")}, seen)
    sb.files.rename(f"{base}/a.txt", f"{base}/c.txt")
    wait_events(w, {(RN, "a.txt")}, seen)
    sb.files.remove(f"{base}/sub/b.txt")
    wait_events(w, {(RM, "sub/b.txt")}, seen)
    # A directory made after the watch started is watched too.
    sb.files.make_dir(f"{base}/new")
    wait_events(w, {(C, "new")}, seen)
    sb.files.write(f"{base}/new/n.txt", "n")
    wait_events(w, {(W, "new/n.txt")}, seen)
    # A command's changes show as well as the SDK's.
    sb.commands.run(f"echo hi >> {base}/c.txt")
    wait_events(w, {(W, "c.txt")}, seen)
    w.stop()
    raises(SandboxException, w.get_new_events, "events after stop")
    # Writes happen in place, as far as the watcher can tell: no temporary names.
    temps = [e.name for e in seen if ".warren-" in e.name]
    check(not temps, f"the agent's temporary files were reported: {temps}")

    # Not recursive, with entries.
    flat = sb.files.watch_dir(base, include_entry=True)
    seen = []
    sb.files.write(f"{base}/d.txt", "d")
    wait_events(flat, {(C, "d.txt")}, seen)
    with_entry = [e for e in seen if e.name == "d.txt" and e.entry is not None]
    check(bool(with_entry), f"include_entry gave no entry: {seen}")
    eq(with_entry[0].entry.path, f"{base}/d.txt", "the event's entry path")
    flat.stop()
    raises(FileNotFoundException, lambda: sb.files.watch_dir("/tmp/no-such-dir"), "watching a missing directory")


# --- signed URLs and envd's auth ------------------------------------------------------------


def with_query(url: str, **changes: Optional[str]) -> str:
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    for k, v in changes.items():
        if v is None:
            query.pop(k, None)
        else:
            query[k] = v
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, quote_via=urllib.parse.quote)))


def test_signed_urls() -> None:
    sb = create(secure=True)
    check(bool(sb.connection_config.sandbox_headers.get("X-Access-Token")), "create returned no envdAccessToken")
    sb.files.write("/tmp/signed.txt", "signed content ✓")
    url = sb.download_url("/tmp/signed.txt")
    check("signature=" in url, f"unsigned download URL {url}")
    r = httpx.get(url)
    eq(r.status_code, 200, f"GET {url}")
    eq(r.content.decode(), "signed content ✓", "download")
    r = httpx.get(sb.download_url("/tmp/signed.txt", use_signature_expiration=120))
    eq((r.status_code, r.content.decode()), (200, "signed content ✓"), "download with an expiration")
    sb.files.write("/root/only-root.txt", "root's", user="root")
    r = httpx.get(sb.download_url("/root/only-root.txt", user="root"))
    eq((r.status_code, r.text), (200, "root's"), "download as root")

    up = sb.upload_url("/tmp/uploaded.txt")
    r = httpx.post(up, files={"file": ("uploaded.txt", b"uploaded \xe2\x9c\x93")})
    eq(r.status_code, 200, f"POST {up}: {r.text}")
    eq(sb.files.read("/tmp/uploaded.txt"), "uploaded ✓", "uploaded content")
    eq(sb.files.get_info("/tmp/uploaded.txt").owner, "user", "an upload is the default user's")
    r = httpx.post(sb.upload_url("/tmp/up2.bin", use_signature_expiration=60), files={"file": ("x", b"\x00\x01")})
    eq(r.status_code, 200, "upload with an expiration")
    eq(bytes(sb.files.read("/tmp/up2.bin", format="bytes")), b"\x00\x01", "uploaded bytes")

    sig = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["signature"]
    # The first character after "v1_" carries six whole bits of the digest.
    tampered = sig[:3] + ("A" if sig[3] != "A" else "B") + sig[4:]
    eq(httpx.get(with_query(url, signature=tampered)).status_code, 401, "a tampered signature")
    eq(httpx.get(with_query(url, path="/etc/passwd")).status_code, 401, "another path with the signature")
    eq(httpx.get(with_query(url, username="root")).status_code, 401, "another user with the signature")
    expired = sb.download_url("/tmp/signed.txt", use_signature_expiration=-120)
    eq(httpx.get(expired).status_code, 401, "an expired signature")
    eq(httpx.post(url, files={"file": ("x", b"x")}).status_code, 401, "a read signature used to write")
    eq(sb.files.read("/tmp/signed.txt"), "signed content ✓", "a refused write changed nothing")
    unsigned = with_query(url, signature=None, signature_expiration=None)
    check(httpx.get(unsigned).status_code >= 400, "a URL without its signature is refused")


def test_envd_auth() -> None:
    a = create()
    b = create()
    ha = dict(a.connection_config.sandbox_headers)
    hb = dict(b.connection_config.sandbox_headers)
    check(bool(ha.get("X-Access-Token")), "create returned no envdAccessToken")
    check(ha["X-Access-Token"] != hb["X-Access-Token"], "two sandboxes share an access token")
    a.files.write("/tmp/mine.txt", "a's")
    files = f"{SANDBOX_URL}/files"
    params = {"path": "/tmp/mine.txt"}
    eq(httpx.get(files, params=params, headers=ha).text, "a's", "the right token")
    no_token = {k: v for k, v in ha.items() if k != "X-Access-Token"}
    eq(httpx.get(files, params=params, headers=no_token).status_code, 401, "no token")
    eq(httpx.get(files, params=params, headers={**ha, "X-Access-Token": "wrong"}).status_code, 401, "a wrong token")
    eq(
        httpx.get(files, params=params, headers={**ha, "X-Access-Token": hb["X-Access-Token"]}).status_code,
        401,
        "another sandbox's token",
    )
    rpc = f"{SANDBOX_URL}/process.Process/List"
    rpc_headers = {"Content-Type": "application/json", "Connect-Protocol-Version": "1"}
    r = httpx.post(rpc, content=b"{}", headers={**ha, **rpc_headers})
    eq(r.status_code, 200, f"a raw Connect call: {r.text}")
    check(isinstance(r.json().get("processes", []), list), f"List reply {r.text}")
    r = httpx.post(rpc, content=b"{}", headers={**ha, **rpc_headers, "X-Access-Token": "wrong"})
    eq(r.status_code, 401, "a Connect call with a wrong token")
    check(httpx.get(f"{SANDBOX_URL}/health", headers=ha).is_success, "health")


# --- lifecycle ----------------------------------------------------------------------------


def test_is_running() -> None:
    sb = create()
    eq(sb.is_running(), True, "running")
    other = Sandbox.connect(sb.sandbox_id)
    eq(other.commands.run("echo via connect").stdout, "via connect\n", "a connected handle runs commands")
    sb.files.write("/tmp/shared.txt", "shared")
    eq(other.files.read("/tmp/shared.txt"), "shared", "a connected handle reads files")
    sb.kill()
    eq(sb.is_running(), False, "killed")
    eq(other.is_running(), False, "killed, through the other handle")
    raises(SandboxNotRunningException, lambda: other.files.read("/tmp/shared.txt"), "files on a killed sandbox")
    raises(SandboxNotRunningException, lambda: other.commands.run("true"), "commands on a killed sandbox")


def test_kill_mid_command() -> None:
    sb = create()
    h = sb.commands.run("sleep 60", background=True)
    w = Waiter(h.wait)
    time.sleep(0.2)
    eq(Sandbox.kill(sb.sandbox_id), True, "kill from another handle")
    w.done(20, "wait() on a command whose sandbox was killed")
    check(
        isinstance(w.error, SandboxNotRunningException),
        f"expected SandboxNotRunningException, got {type(w.error).__name__}: {w.error}",
    )


# --- async ----------------------------------------------------------------------------------


async def aevents_until(events: list, want: set, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not want <= {(e.type, e.name) for e in events}:
        if time.monotonic() > deadline:
            raise AssertionError(f"events {want} not within {timeout} s; seen {[(e.type.value, e.name) for e in events]}")
        await asyncio.sleep(0.05)


async def _async_commands() -> None:
    sb = await acreate()
    r = await sb.commands.run("echo out; echo err >&2")
    eq((r.stdout, r.stderr, r.exit_code), ("out\n", "err\n", 0), "async run")
    chunks: list[str] = []

    async def on_out(s: str) -> None:
        chunks.append(s)

    await sb.commands.run("for i in 1 2 3; do echo $i; sleep 0.2; done", on_stdout=on_out)
    eq("".join(chunks), "1\n2\n3\n", "async streamed stdout")
    try:
        await sb.commands.run("echo bad >&2; exit 7")
        raise AssertionError("exit 7 did not raise")
    except CommandExitException as e:
        eq((e.exit_code, e.stderr), (7, "bad\n"), "async CommandExitException")
    r = await sb.commands.run('echo "$X"; whoami', envs={"X": "y"}, user="root", cwd="/")
    eq(r.stdout, "y\nroot\n", "async envs and user")
    h = await sb.commands.run("cat", background=True, stdin=True)
    await sb.commands.send_stdin(h.pid, "async in\n")
    await h.close_stdin()
    eq((await asyncio.wait_for(h.wait(), 20)).stdout, "async in\n", "async stdin")
    h = await sb.commands.run("sleep 30", background=True)
    check(h.pid in [p.pid for p in await sb.commands.list()], "async list")
    eq(await h.kill(), True, "async kill")
    try:
        await asyncio.wait_for(h.wait(), 20)
        raise AssertionError("a killed command's wait did not raise")
    except CommandExitException:
        pass
    deadline = time.monotonic() + 15
    while h.pid in [p.pid for p in await sb.commands.list()]:
        check(time.monotonic() < deadline, "the killed command stays listed")
        await asyncio.sleep(0.05)
    eq(await sb.commands.kill(h.pid), False, "async kill again")
    try:
        await asyncio.wait_for(sb.commands.run("sleep 30", timeout=2), 40)
        raise AssertionError("timeout=2 did not raise")
    except TimeoutException:
        pass
    eq(await sb.is_running(), True, "async is_running")
    await sb.kill()


async def _async_files() -> None:
    sb = await acreate()
    base = f"/tmp/aw-{secrets.token_hex(3)}"
    await sb.files.make_dir(base)
    events: list = []
    handle = await sb.files.watch_dir(base, on_event=events.append, recursive=True)
    info = await sb.files.write(f"{base}/a.txt", "async ✓")
    eq(info.path, f"{base}/a.txt", "async write")
    eq(await sb.files.read(f"{base}/a.txt"), "async ✓", "async text read")
    eq(bytes(await sb.files.read(f"{base}/a.txt", format="bytes")), "async ✓".encode(), "async bytes read")
    blob = os.urandom(1 << 20)
    await sb.files.write(f"{base}/blob.bin", blob)
    reader = await sb.files.read(f"{base}/blob.bin", format="stream")
    async with reader as stream:
        got = b"".join([chunk async for chunk in stream])
    eq(hashlib.sha256(got).hexdigest(), hashlib.sha256(blob).hexdigest(), "async stream read")
    infos = await sb.files.write_files([{"path": f"{base}/b.txt", "data": "b"}, {"path": f"{base}/sub/c.txt", "data": b"c"}])
    eq(sorted(i.path for i in infos), [f"{base}/b.txt", f"{base}/sub/c.txt"], "async write_files")
    names = sorted(e.name for e in await sb.files.list(base, depth=2))
    eq(names, ["a.txt", "b.txt", "blob.bin", "c.txt", "sub"], "async list")
    await sb.files.write(f"{base}/gz.txt", "zip " * 1000, gzip=True)
    eq(await sb.files.read(f"{base}/gz.txt", gzip=True), "zip " * 1000, "async gzip")
    if XATTRS:
        eq((await sb.files.write(f"{base}/m.txt", "m", metadata={"k": "v"})).metadata, {"k": "v"}, "async metadata")
        eq((await sb.files.get_info(f"{base}/m.txt")).metadata, {"k": "v"}, "async stored metadata")
    await sb.files.rename(f"{base}/b.txt", f"{base}/b2.txt")
    await sb.files.remove(f"{base}/a.txt")
    eq(await sb.files.exists(f"{base}/a.txt"), False, "async remove")
    C, W, RM, RN = (
        FilesystemEventType.CREATE,
        FilesystemEventType.WRITE,
        FilesystemEventType.REMOVE,
        FilesystemEventType.RENAME,
    )
    await aevents_until(events, {(C, "a.txt"), (W, "a.txt"), (C, "sub"), (RN, "b.txt"), (RM, "a.txt")})
    await handle.stop()
    try:
        await sb.files.read(f"{base}/nope")
        raise AssertionError("reading a missing file worked")
    except FileNotFoundException:
        pass
    await sb.kill()


async def _async_pty() -> None:
    sb = await acreate()
    out = bytearray()
    term = await sb.pty.create(PtySize(rows=24, cols=80), on_data=out.extend)

    async def wait_for(needle: str) -> None:
        deadline = time.monotonic() + 15
        while needle not in out.decode("utf-8", "replace"):
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not in the PTY output: {out.decode('utf-8', 'replace')!r}")
            await asyncio.sleep(0.05)

    await sb.pty.send_stdin(term.pid, b"echo async-$((6*7))\n")
    await wait_for("async-42")
    await sb.pty.resize(term.pid, PtySize(rows=40, cols=120))
    await sb.pty.send_stdin(term.pid, b"stty size\n")
    await wait_for("40 120")
    await sb.pty.send_stdin(term.pid, b"exit\n")
    eq((await asyncio.wait_for(term.wait(), 20)).exit_code, 0, "async pty exit")
    term = await sb.pty.create(PtySize(rows=24, cols=80), on_data=lambda _: None)
    eq(await sb.pty.kill(term.pid), True, "async pty kill")
    try:
        await asyncio.wait_for(term.wait(), 20)
        raise AssertionError("a killed PTY's wait did not raise")
    except CommandExitException:
        pass
    await sb.kill()


def test_async_commands() -> None:
    asyncio.run(_async_commands())


def test_async_files() -> None:
    asyncio.run(_async_files())


def test_async_pty() -> None:
    asyncio.run(_async_pty())


TESTS = [
    test_run_foreground,
    test_run_streaming,
    test_run_exit_code,
    test_run_envs_cwd,
    test_run_as_root,
    test_run_timeout,
    test_background_list_kill,
    test_connect_running,
    test_stdin,
    test_stdin_stream,
    test_output_encoding,
    test_pty,
    test_pty_kill,
    test_pty_connect,
    test_files_read_write,
    test_files_write_files,
    test_files_upload_modes,
    test_files_gzip,
    test_files_list_depth,
    test_files_info,
    test_files_ops,
    test_files_errors,
    test_files_metadata,
    test_watch,
    test_signed_urls,
    test_envd_auth,
    test_is_running,
    test_kill_mid_command,
    test_async_commands,
    test_async_files,
    test_async_pty,
]


def main(argv: list[str]) -> int:
    if not SANDBOX_URL:
        print("FAIL setup: neither E2B_SANDBOX_URL nor E2B_API_URL is set", flush=True)
        return 1
    return run(TESTS, MADE, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
