#!/bin/bash
# The smallest job: print a greeting and where it ran.
echo "Hello World from Hodei Jobs!"
echo "Running on $(hostname) as $(id -un 2>/dev/null || id -u) at $(date -u +%H:%M:%S)"
