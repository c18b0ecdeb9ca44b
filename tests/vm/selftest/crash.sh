#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Harness self-test: exits non-zero without reporting a FAIL; /init must add
# "FAIL crash: exited 3".
# shellcheck source=../guest/lib.sh
. "${DCTEST_LIB:-/lib/dctest/lib.sh}"

pass crash-started
exit 3
