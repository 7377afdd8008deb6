#!/bin/bash
# The job's environment and a scratch file in the working directory.
set -euo pipefail
echo "HODEI_JOB_ID=${HODEI_JOB_ID:-unset}"
echo "working directory: $(pwd)"
scratch=$(mktemp -d)
echo "payload" > "$scratch/file.txt"
echo "wrote $(wc -c < "$scratch/file.txt") bytes"
rm -rf "$scratch"
