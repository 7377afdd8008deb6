#!/bin/bash
# A job that fails on purpose: it must end FAILED with exit code 42.
echo "starting a task that will fail"
echo "something went wrong" >&2
exit 42
