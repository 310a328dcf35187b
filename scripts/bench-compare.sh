#!/usr/bin/env bash
# Cold start and exec of two warren builds in one run, so a change's cost is measured against
# a baseline on the same machine at the same time (docs/PERFORMANCE.md).
#
# Usage: sudo scripts/bench-compare.sh BEFORE_BIN AFTER_BIN [ROUNDS] [RUNS]
#
# Three daemons run side by side on loopback ports 7491-7493, each with its own data dir
# under $OUT (default /tmp/warren-bench-compare):
#   before  BEFORE_BIN serve --storage dir
#   off     AFTER_BIN  serve --storage dir --user-namespaces off
#   on      AFTER_BIN  serve --storage dir --user-namespaces on
# Each round runs `warren bench --scenarios cold,exec` against the three in turn (so drift in
# the machine's load spreads over all of them); JSON results land in $OUT/<round>-<name>.json.
# Older builds that do not know a flag get only --storage dir when they are the BEFORE build.
set -euo pipefail
before_bin=$(readlink -f "$1")
after_bin=$(readlink -f "$2")
rounds=${3:-2}
runs=${4:-200}
out=${OUT:-/tmp/warren-bench-compare}
mkdir -p "$out"

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$out"/data-*
}
trap cleanup EXIT

start() { # name port bin args...
    local name=$1 port=$2 bin=$3
    shift 3
    rm -rf "$out/data-$name"
    "$bin" serve --data-dir "$out/data-$name" --listen "127.0.0.1:$port" --log-level warn \
        "$@" >"$out/$name.log" 2>&1 &
    pids+=($!)
}
start before 7491 "$before_bin" --storage dir
start off 7492 "$after_bin" --storage dir --user-namespaces off --cleanup-on-exit
start on 7493 "$after_bin" --storage dir --user-namespaces on --cleanup-on-exit
for port in 7491 7492 7493; do
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
        sleep 0.1
    done
done

for r in $(seq "$rounds"); do
    for n in before:7491 off:7492 on:7493; do
        name=${n%%:*}
        port=${n##*:}
        echo "== round $r: $name"
        WARREN_URL=http://127.0.0.1:$port "$after_bin" bench --scenarios cold,exec \
            --runs "$runs" --baseline-runs "$runs" --json-out "$out/$r-$name.json" 2>/dev/null |
            grep -E "^(cold|  create|  exec|  delete|baseline|exec round|lifecycle)"
    done
done

# p50 of each step per build, averaged over the rounds.
python3 - "$out" "$rounds" <<'EOF'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
steps = ["cold", "  create", "  exec", "  delete", "baseline", "exec round"]
print(f"\n{'p50 ms, mean of ' + str(rounds) + ' rounds':44}" + "".join(f"{n:>10}" for n in ["before", "off", "on"]))
for step in steps:
    row = []
    for name in ["before", "off", "on"]:
        vals = []
        for r in range(1, rounds + 1):
            res = json.load(open(f"{out}/{r}-{name}.json"))["results"]
            vals += [x["p50_ms"] for x in res if x["name"].startswith(step)]
        row.append(sum(vals) / len(vals) if vals else float("nan"))
    label = next(x["name"] for x in json.load(open(f"{out}/1-on.json"))["results"] if x["name"].startswith(step))
    print(f"{label:44}" + "".join(f"{v:10.3f}" for v in row))
EOF
