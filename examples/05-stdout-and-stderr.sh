#!/bin/bash
# Output on both streams: both are stored, marked stdout or stderr.
for i in 1 2 3; do
  echo "progress $i/3"
  echo "warning $i: this goes to stderr" >&2
  sleep 0.5
done
echo "finished"
