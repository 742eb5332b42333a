#!/usr/bin/env bash
# Upload throughput and memory: a 1 GiB file (plus the two PEFT fixture files) uploaded with
# `curl -F` into a freshly started quiver (SQLite + local files), 3 times into 3 adapters; then the
# server's peak RSS (VmHWM). As references under the same conditions, alternating with the
# uploads: `cp` of each file on the same disk (lands in the page cache) and `dd conv=fdatasync`
# (synced to disk, as quiver syncs each blob before answering). See bench/README.md.
#
#   bench/upload.sh
#   SIZE_MIB=2048 UPLOADS=5 bench/upload.sh
#   DATA_DIR_BASE=/dev/shm bench/upload.sh     # quiver's data dir in RAM: the server without the disk
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
start_load_watch "$WORK/load-watch"
wait_idle
echo "note: curl and quiver share this machine's $(nproc) CPUs; loopback; source files in $WORK; quiver's data dir in ${DATA_DIR_BASE:-$WORK} ($(df --output=fstype "${DATA_DIR_BASE:-$WORK}" | tail -1));"
echo "      'sync' before each upload and copy; quiver syncs each blob to disk before answering, cp does not, dd conv=fdatasync does"

# Distinct random content for each upload, so no upload is a duplicate of an earlier blob.
for i in $(seq 1 "$UPLOADS"); do
    head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$WORK/big$i.dat"
done
SIZE=$(stat -c %s "$WORK/big1.dat")
CFG_SIZE=$(stat -c %s "$FIXTURE_DIR/adapter_config.json")
W_SIZE=$(stat -c %s "$FIXTURE_DIR/adapter_model.safetensors")

QPORT=$(free_port)
# DATA_DIR_BASE=/dev/shm puts quiver's data (not the source files) in RAM: the upload path without
# the disk, i.e. what the server itself sustains.
DATA_DIR_BASE="${DATA_DIR_BASE:-$WORK}"
DATA="$(mktemp -d "$DATA_DIR_BASE/quiver-bench-upload-data.XXXXXX")"
trap 'bench_cleanup; rm -rf "$WORK" "$DATA"' EXIT
TOKEN=$(make_token "$DATA" bench write)
[[ -n "$TOKEN" ]] || die "could not create a token"
start_quiver QPID "$QPORT" "$DATA" "$WORK/quiver.log"
Q="http://127.0.0.1:$QPORT"
rss() { awk -v k="$1:" '$1 == k {print int($2 / 1024)}' "/proc/$QPID/status"; } # MiB
echo "quiver started fresh (pid $QPID): VmRSS $(rss VmRSS) MiB, VmHWM $(rss VmHWM) MiB"

# i → "GB/s" of copying big$i.dat on the same disk (the copy is kept until the end, like the blobs).
cp_one() {
    local t0 t1
    t0=$(now_s)
    cp "$WORK/big$1.dat" "$WORK/copy$1.dat"
    t1=$(now_s)
    gbps "$SIZE" "$(python3 -c "print($t1 - $t0)")"
}

# i → "GB/s" of a durable copy: dd with a final fdatasync, the contract quiver keeps for a blob
# (synced to disk before the upload is answered).
dd_one() {
    local t0 t1
    t0=$(now_s)
    dd if="$WORK/big$1.dat" of="$WORK/dd$1.dat" bs=1M conv=fdatasync status=none
    t1=$(now_s)
    gbps "$SIZE" "$(python3 -c "print($t1 - $t0)")"
}

# i → "bytes seconds" of uploading big$i.dat, after checking the answer.
upload_one() {
    local i="$1" out code sent t want_sha
    curl -fsS -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        -d "{\"owner\":\"bench\",\"name\":\"upload-$i\",\"base_model\":\"quiver-test/tiny-llama\"}" "$Q/api/v1/adapters"
    sync
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
    python3 - "$WORK/version$i.json" "$SIZE" "$want_sha" <<'EOF' >&2 || die "upload $i: version JSON does not match the file"
import json, sys
v = json.load(open(sys.argv[1]))
f = {x["path"]: x for x in v["files"]}
assert f["big.dat"]["size"] == int(sys.argv[2]), f["big.dat"]
assert f["big.dat"]["sha256"] == sys.argv[3], f["big.dat"]
assert {"adapter_config.json", "adapter_model.safetensors"} <= f.keys()
EOF
    echo "$sent $t"
}

stats() { # values → "best median"
    python3 -c 'import statistics, sys; v = [float(x) for x in sys.argv[1:]]; print(f"{max(v):.3f} {statistics.median(v):.3f}")' "$@"
}

declare -a TP CP DD
for i in $(seq 1 "$UPLOADS"); do
    # Alternate which goes first; 'sync' before each, so each starts with no dirty pages.
    if ((i % 2)); then order="q c d"; else order="d c q"; fi
    wait_quiet
    m0=$(load_watch_mark)
    for who in $order; do
        sync
        if [[ $who == c ]]; then
            CP+=("$(cp_one "$i")")
        elif [[ $who == d ]]; then
            DD+=("$(dd_one "$i")")
        else
            read -r sent t <<<"$(upload_one "$i")"
            TP+=("$(gbps "$sent" "$t")")
        fi
    done
    echo "upload $i: $sent bytes of multipart body in ${t}s = ${TP[-1]} GB/s (201; size and sha256 checked); quiver VmRSS now $(rss VmRSS) MiB; cp of the same file: ${CP[-1]} GB/s; dd conv=fdatasync: ${DD[-1]} GB/s"
    echo "    $(load_watch_between "$m0" "$(load_watch_mark)")"
done
sleep 1
# The server is still running: VmHWM is its peak resident set over the whole bench.
HWM=$(rss VmHWM)
RSS_NOW=$(rss VmRSS)
[[ -n "$HWM" ]] || die "could not read /proc/$QPID/status (did quiver exit?)"

read -r best med <<<"$(stats "${TP[@]}")"
read -r cp_best cp_med <<<"$(stats "${CP[@]}")"
read -r dd_best dd_med <<<"$(stats "${DD[@]}")"
echo
echo "RESULT upload (GB/s = 10^9 bytes/s of multipart body; file ${SIZE_MIB} MiB + ${CFG_SIZE} B + ${W_SIZE} B; ${UPLOADS} uploads)"
printf '%-42s %s\n' "quiver upload, best" "$best GB/s"
printf '%-42s %s\n' "quiver upload, median" "$med GB/s"
printf '%-42s %s\n' "reference: cp of the same files, best" "$cp_best GB/s"
printf '%-42s %s\n' "reference: cp of the same files, median" "$cp_med GB/s"
printf '%-42s %s\n' "reference: dd conv=fdatasync, best" "$dd_best GB/s"
printf '%-42s %s\n' "reference: dd conv=fdatasync, median" "$dd_med GB/s"
printf '%-42s %s\n' "ratio quiver/cp, median" "$(ratio "$med" "$cp_med")"
printf '%-42s %s\n' "ratio quiver/dd fdatasync, median" "$(ratio "$med" "$dd_med")"
printf '%-42s %s\n' "quiver peak RSS (VmHWM)" "$HWM MiB (VmRSS after: $RSS_NOW MiB)"
printf '%-42s %s\n' "warnings/errors in quiver's log" "$(log_problems "$WORK/quiver.log")"
v1=$(python3 -c "print('met' if $med >= $TARGET_GBPS else 'NOT met')")
v2=$(python3 -c "print('met' if $HWM < $TARGET_RSS_MIB else 'NOT met')")
echo "target >= $TARGET_GBPS GB/s (median): $v1; target peak RSS < $TARGET_RSS_MIB MiB: $v2"
load_watch_report
