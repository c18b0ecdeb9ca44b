#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Harness self-test: never finishes; the runner must report a timeout.
# shellcheck source=../guest/lib.sh
. "${DCTEST_LIB:-/lib/dctest/lib.sh}"

pass hang-started
sleep 100000
