#!/bin/sh
# The test command cosmic-ray runs for each mutant of one module (it runs a
# command without a shell, hence this script).  Unit tests first; only a
# mutant they miss pays for the replica tests.  Exit status 0: survived.
# MUTATION_UNIT_ONLY=1 runs the first phase only: for re-running survivors
# (which already passed the replica tests) after new unit tests were added.
set -e
cd "$(dirname "$0")/../.."
base=${MUTATION_TMP:-/tmp/chat-mutation-$$}
pytest() {
    .venv/bin/pytest -q -x -p no:cacheprovider -o addopts= -o timeout=120 \
        --basetemp "$base" "$@" >/dev/null 2>&1
}
replicas() {
    [ -n "$MUTATION_UNIT_ONLY" ] || pytest "$@"
}
trap 'rm -rf "$base"' EXIT
case "$1" in
protocol)
    pytest tests/test_protocol.py tests/test_settings.py
    replicas tests/test_bad_input.py tests/test_history.py \
        -k "malformed or refused or resume or window or newcomer" ;;
delivery)
    pytest tests/test_ordering.py tests/test_catch_up.py
    replicas tests/test_backplane.py tests/test_history.py \
        -k "stream_crosses or (cut and pubsub and live-only)" ;;
history|cursor)
    pytest tests/test_ordering.py tests/test_catch_up.py tests/test_redis_history.py
    replicas tests/test_history.py \
        -k "newcomer or resume or window or (cut and pubsub and live-only)" ;;
backplane)
    pytest tests/test_manual_backplane.py
    replicas tests/test_backplane.py tests/test_room_channels.py
    replicas tests/test_history.py -k "cut and live-only" ;;
*)
    echo "usage: $0 protocol|delivery|history|backplane" >&2
    exit 2 ;;
esac
