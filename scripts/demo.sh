#!/usr/bin/env bash
# A small scientific workflow, driven through the jobbridge command line only:
#
#   prepare          writes the numbers 1..N to numbers.txt
#   partial-sum[0-3] four array members, each adds up one quarter (after prepare)
#   total            adds the four partial sums (after every member)
#
# Usage: scripts/demo.sh   (JOBBRIDGE=/path/to/jobbridge to choose the executable,
# JOBBRIDGE_DATA_DIR / JOBBRIDGE_CONFIG as for any jobbridge command)

set -euo pipefail

JOBBRIDGE=${JOBBRIDGE:-jobbridge}
N=100000
PARTS=4
EXPECTED=$((N * (N + 1) / 2))

jb() { "$JOBBRIDGE" "$@"; }

workdir=$(mktemp -d "${TMPDIR:-/tmp}/jobbridge-demo.XXXXXX")
trap 'rm -rf -- "$workdir"' EXIT
echo "== work directory: $workdir"

echo "== submitting: prepare, partial-sum[0-$((PARTS - 1))], total"
prepare=$(jb submit -q --name prepare --directory "$workdir" --stdout numbers.txt -- seq 1 "$N")

# Each member finds its quarter from $JOBBRIDGE_ARRAY_INDEX; the program travels as argv.
partial_program='
import os, sys
index, parts = int(os.environ["JOBBRIDGE_ARRAY_INDEX"]), int(sys.argv[1])
with open("numbers.txt") as handle:
    numbers = [int(line) for line in handle]
share = numbers[index * len(numbers) // parts : (index + 1) * len(numbers) // parts]
with open(f"partial-{index}.txt", "w") as handle:
    handle.write(f"{sum(share)}\n")
print(f"part {index}: {len(share)} numbers, sum {sum(share)}")
'
members_text=$(jb submit -q --name partial-sum --array "0-$((PARTS - 1))" --after "$prepare" \
    --directory "$workdir" -- python3 -c "$partial_program" "$PARTS")
mapfile -t members <<<"$members_text"

after_members=()
partial_files=()
for index in "${!members[@]}"; do
    after_members+=(--after "${members[$index]}")
    partial_files+=("partial-$index.txt")
done
# shellcheck disable=SC2016  # $1 belongs to awk
total=$(jb submit -q --name total "${after_members[@]}" --directory "$workdir" \
    -- awk '{ sum += $1 } END { printf "%d\n", sum }' "${partial_files[@]}")

echo "== waiting for all $((PARTS + 2)) jobs"
jb wait "$prepare" "${members[@]}" "$total"

echo "== the newest jobs"
jb list --limit $((PARTS + 2))

echo "== output of the total job ($total)"
result=$(jb logs "$total")
echo "$result"
echo "expected: $EXPECTED (the sum of 1..$N)"
if [[ "$result" != "$EXPECTED" ]]; then
    echo "the workflow computed $result, not $EXPECTED" >&2
    exit 1
fi
echo "== the workflow computed the expected total"
