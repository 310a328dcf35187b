"""The runner both E2B SDK scripts share: runs the tests (all, or those named on the
command line), prints ``ok <name> (<secs> s)`` or ``FAIL <name>: <traceback>`` for each,
kills every sandbox the tests made, and answers the exit status (1 if any failed).
A watchdog dumps the stacks and exits after ``E2B_SDK_TIMEOUT`` seconds (default 600):
SDK streams have no overall client-side bound, so a server that never ends one would
otherwise hang the run."""

import faulthandler
import os
import time
import traceback

from e2b import Sandbox


def run(tests: list, made: list[str], argv: list[str]) -> int:
    faulthandler.dump_traceback_later(float(os.environ.get("E2B_SDK_TIMEOUT", "600")), exit=True)
    by_name = {t.__name__.removeprefix("test_"): t for t in tests}
    unknown = [n for n in argv[1:] if n not in by_name]
    if unknown:
        print(f"FAIL setup: unknown tests {unknown}; known: {list(by_name)}", flush=True)
        return 1
    failed = 0
    for t in [by_name[n] for n in argv[1:]] or tests:
        name = t.__name__.removeprefix("test_")
        start = time.monotonic()
        try:
            t()
            print(f"ok {name} ({time.monotonic() - start:.1f} s)", flush=True)
        except Exception:  # noqa: BLE001 - reported, the run goes on
            failed += 1
            print(f"FAIL {name}: {traceback.format_exc()}", flush=True)
    for sid in made:
        try:
            Sandbox.kill(sid)
        except Exception as e:  # noqa: BLE001
            print(f"cleanup of {sid}: {e}", flush=True)
    return 1 if failed else 0
