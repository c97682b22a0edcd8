# Sourced by scripts: create (or refresh) the project's virtual environment and install it.
# Usage: . scripts/_venv.sh EXTRAS   (EXTRAS like "test" or "" for none)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MAPREDUCE_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtual environment in $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is needed"'
spec="$ROOT"
[ -n "${1:-}" ] && spec="$ROOT[$1]"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$spec" 2>&1 \
  | grep -v -E '^(WARNING: Location|  WARNING: Location)' >&2 || true
"$VENV/bin/python" -c 'import mapreduce, zmq, cloudpickle, click, msgpack' \
  || { echo "installing the project into $VENV failed" >&2; exit 1; }
