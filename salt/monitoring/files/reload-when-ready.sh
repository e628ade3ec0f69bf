#!/bin/sh
# Managed by Salt (salt/monitoring).
#   reload-when-ready SERVICE URL
# Reloads SERVICE (SIGHUP) once URL (its /-/ready) answers: a SIGHUP that comes before the
# service has set up its handler, right after a start, stops it instead.
set -eu
service=$1
url=$2
python3 - "$url" <<'PY'
import sys, time, urllib.request
deadline = time.monotonic() + 60
while True:
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=2):
            break
    except OSError as exc:
        if time.monotonic() > deadline:
            sys.exit(f"{sys.argv[1]} did not answer within 60 s: {exc}")
        time.sleep(0.5)
PY
exec systemctl reload "$service"
