#!/usr/bin/env bash
# Starts the UWS service on 127.0.0.1:8000 with the embedded defaults (local backend,
# SQLite in the data directory) and the demo job definition, after adding a user `demo`
# and printing their token and how to use it.
#
# Usage: scripts/serve-demo.sh   (JOBBRIDGE=/path/to/jobbridge to choose the executable;
# JOBBRIDGE_DATA_DIR / JOBBRIDGE_CONFIG as for any jobbridge command; PORT to choose the port)

set -euo pipefail

JOBBRIDGE=${JOBBRIDGE:-jobbridge}
HOST=127.0.0.1
PORT=${PORT:-8000}
here=$(cd "$(dirname "$0")/.." && pwd)
definitions="$here/examples/definitions"

user="demo-$(date +%Y%m%d%H%M%S)"
token=$("$JOBBRIDGE" user add "$user")
url="http://$HOST:$PORT"

cat <<INFO
== jobbridge UWS service: $url
== job list of the demo definition: $url/jobs/sum
== user: $user   token (shown once): $token
== try:
   curl -si -H "Authorization: Bearer $token" -d count=1000 -d PHASE=RUN $url/jobs/sum
   curl -s  -H "Authorization: Bearer $token" "$url/jobs/sum?LAST=10"
== OpenAPI: $url/docs   (Ctrl-C stops the service; jobs go on and are picked up next time)
INFO

exec "$JOBBRIDGE" serve --host "$HOST" --port "$PORT" --definitions "$definitions"
