"""Times E2B's Python SDK end to end against a Warren daemon (not a test: the figures in
docs/PERFORMANCE.md). Usage, with E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY set:

    .ci/venvs/e2b/bin/python crates/cli/tests/e2b/sdk_timing.py [RUNS]

Each run: Sandbox.create() until it returns, commands.run("echo ready"), files.write and
files.read of 4 KiB, kill(). Three warm-up runs first; prints p50/p90 of each step in ms.
"""

import statistics
import sys
import time

from e2b import Sandbox


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    steps = {"create": [], "commands.run": [], "files.write": [], "files.read": [], "kill": [], "all": []}
    data = b"x" * 4096
    for i in range(runs + 3):
        t0 = time.perf_counter()
        sb = Sandbox.create()
        t1 = time.perf_counter()
        assert sb.commands.run("echo ready").stdout == "ready\n"
        t2 = time.perf_counter()
        sb.files.write("/tmp/t.bin", data)
        t3 = time.perf_counter()
        assert sb.files.read("/tmp/t.bin", format="bytes") == data
        t4 = time.perf_counter()
        sb.kill()
        t5 = time.perf_counter()
        if i < 3:
            continue
        for name, d in zip(steps, [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0]):
            steps[name].append(d * 1000)
    for name, xs in steps.items():
        print(f"{name:14} p50 {statistics.median(xs):6.1f} ms  p90 {pct(xs, 90):6.1f} ms")


if __name__ == "__main__":
    main()
