#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Harness self-test: one check fails on purpose; the runner must exit 1.
# shellcheck source=../guest/lib.sh
. "${DCTEST_LIB:-/lib/dctest/lib.sh}"

pass before-failure
check deliberate-failure false
