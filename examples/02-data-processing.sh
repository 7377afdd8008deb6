#!/bin/bash
# Generate a small CSV, then aggregate it with awk.
set -euo pipefail
data=$(mktemp)
for i in $(seq 1 100); do echo "$i,$((i % 7)),$((i * 3))"; done > "$data"
echo "rows: $(wc -l < "$data")"
awk -F, '{ sum[$2] += $3 } END { for (k in sum) printf "bucket %s total %d\n", k, sum[k] }' "$data" | sort
rm -f "$data"
echo "data processing done"
