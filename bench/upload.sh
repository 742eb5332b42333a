#!/usr/bin/env bash
# Upload throughput and memory: a 1 GiB file (plus the two PEFT fixture files) uploaded with
# `curl -F` into a freshly started quiver (SQLite + local files), 3 times into 3 adapters; then the
# server's peak RSS (VmHWM). As a reference on the same disk in the same run: `cp` of the same
# file into the data directory. See bench/README.md.
#
#   bench/upload.sh
#   SIZE_MIB=2048 UPLOADS=5 bench/upload.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZE_MIB="${SIZE_MIB:-1024}"
UPLOADS="${UPLOADS:-3}"
TARGET_GBPS=0.5
TARGET_RSS_MIB=200

need curl python3 sha256sum
check_quiver

WORK="$(mktemp -d /tmp/quiver-bench-upload.XXXXXX)"
trap 'bench_cleanup; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

echo "== quiver upload bench: ${UPLOADS} uploads of ${SIZE_MIB} MiB + the 2 fixture files"
machine_line
echo "note: curl and quiver share this machine's $(nproc) CPUs; loopback; data dir on the same disk as the source files (/tmp);"
echo "      'sync' before each upload and before the cp, none after: writes land in the page cache, as a server's usually do"

# Distinct random content for each upload, so no upload is a duplicate of an earlier blob.
for i in $(seq 1 "$UPLOADS"); do
    head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$WORK/big$i.dat"
done
# Flush them to disk now: otherwise 3 GiB of dirty pages hit the kernel's dirty-page limits during
# the uploads and the bench measures the disk's writeback instead of the server.
sync
SIZE=$(stat -c %s "$WORK/big1.dat")
CFG_SIZE=$(stat -c %s "$FIXTURE_DIR/adapter_config.json")
W_SIZE=$(stat -c %s "$FIXTURE_DIR/adapter_model.safetensors")

QPORT=$(free_port)
DATA="$WORK/quiver-data"
TOKEN=$(make_token "$DATA" bench write)
[[ -n "$TOKEN" ]] || die "could not create a token"
start_quiver QPID "$QPORT" "$DATA" "$WORK/quiver.log"
Q="http://127.0.0.1:$QPORT"
rss() { awk -v k="$1:" '$1 == k {print int($2 / 1024)}' "/proc/$QPID/status"; } # MiB
echo "quiver started fresh (pid $QPID): VmRSS $(rss VmRSS) MiB, VmHWM $(rss VmHWM) MiB"

declare -a TP
for i in $(seq 1 "$UPLOADS"); do
    curl -fsS -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        -d "{\"owner\":\"bench\",\"name\":\"upload-$i\",\"base_model\":\"quiver-test/tiny-llama\"}" "$Q/api/v1/adapters"
    sync # every upload (and the cp below) starts with no dirty pages: the same conditions for each
    # 'Expect:' drops curl's Expect: 100-continue, as large-upload clients usually do.
    out=$(curl -sS -o "$WORK/version$i.json" -w '%{http_code} %{size_upload} %{time_total}' -H 'Expect:' \
        -H "Authorization: Bearer $TOKEN" \
        -F "file=@$FIXTURE_DIR/adapter_config.json;filename=adapter_config.json" \
        -F "file=@$FIXTURE_DIR/adapter_model.safetensors;filename=adapter_model.safetensors" \
        -F "file=@$WORK/big$i.dat;filename=big.dat" \
        "$Q/api/v1/adapters/bench/upload-$i/versions")
    read -r code sent t <<<"$out"
    [[ "$code" == 201 ]] || die "upload $i answered $code: $(cat "$WORK/version$i.json")"
    # The version must list the big file with its true size and hash.
    want_sha=$(sha256sum "$WORK/big$i.dat" | cut -d' ' -f1)
    python3 - "$WORK/version$i.json" "$SIZE" "$want_sha" <<'EOF' || die "upload $i: version JSON does not match the file"
import json, sys
v = json.load(open(sys.argv[1]))
f = {x["path"]: x for x in v["files"]}
assert f["big.dat"]["size"] == int(sys.argv[2]), f["big.dat"]
assert f["big.dat"]["sha256"] == sys.argv[3], f["big.dat"]
assert {"adapter_config.json", "adapter_model.safetensors"} <= f.keys()
EOF
    TP+=("$(gbps "$sent" "$t")")
    echo "upload $i: $sent bytes of multipart body in ${t}s = ${TP[-1]} GB/s (201; sizes and sha256 checked); VmRSS now $(rss VmRSS) MiB"
done
sleep 1
HWM=$(rss VmHWM)
RSS_NOW=$(rss VmRSS)
# The server stays up: re-read after the uploads, in case memory is released lazily.
[[ -n "$HWM" ]] || die "could not read /proc/$QPID/status (did quiver exit?)"

# Reference in the same run: copying the same amount of data on the same disk (no fsync, like the
# server's own writes).
sync
t0=$(now_s)
cp "$WORK/big1.dat" "$WORK/copy.dat"
t1=$(now_s)
CP=$(gbps "$SIZE" "$(python3 -c "print($t1 - $t0)")")
rm -f "$WORK/copy.dat"

read -r best med <<<"$(python3 -c 'import statistics, sys; v = [float(x) for x in sys.argv[1:]]; print(f"{max(v):.3f} {statistics.median(v):.3f}")' "${TP[@]}")"
echo
echo "RESULT upload (GB/s = 10^9 bytes/s of multipart body; file ${SIZE_MIB} MiB + ${CFG_SIZE} B + ${W_SIZE} B; ${UPLOADS} uploads)"
printf '%-40s %s\n' "quiver upload, best" "$best GB/s"
printf '%-40s %s\n' "quiver upload, median" "$med GB/s"
printf '%-40s %s\n' "reference: cp of the same file, same disk" "$CP GB/s"
printf '%-40s %s\n' "ratio quiver median / cp" "$(ratio "$med" "$CP")"
printf '%-40s %s\n' "quiver peak RSS (VmHWM)" "$HWM MiB (VmRSS after: $RSS_NOW MiB)"
printf '%-40s %s\n' "warnings/errors in quiver's log" "$(log_problems "$WORK/quiver.log")"
v1=$(python3 -c "print('met' if $med >= $TARGET_GBPS else 'NOT met')")
v2=$(python3 -c "print('met' if $HWM < $TARGET_RSS_MIB else 'NOT met')")
echo "target >= $TARGET_GBPS GB/s (median): $v1; target peak RSS < $TARGET_RSS_MIB MiB: $v2"
