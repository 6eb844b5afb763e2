# Sourced by the other scripts: a virtualenv in .venv with this package and its test extras.
# Installs Debian's python3-venv first when the machine's Python cannot make a venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq "$@" >/dev/null
}

if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv >/dev/null 2>&1; then
    rm -rf .venv
    echo "bootstrap: installing python3-venv with apt-get" >&2
    apt_install python3-venv
    "$PY" -m venv .venv
  fi
fi
stamp=".venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing faceid-batch and its dependencies into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  if ! .venv/bin/python -m pip install -q -e '.[test]' >.venv/pip-install.log 2>&1; then
    tail -n 30 .venv/pip-install.log >&2
    echo "bootstrap: pip install failed (full log: .venv/pip-install.log)" >&2; exit 1
  fi
  .venv/bin/python -c "import faceid_batch, faceid_sim, celery, qcloud_cos" \
    || { echo "bootstrap: install failed" >&2; exit 1; }
  rm -f .venv/.installed-*; touch "$stamp"
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "bootstrap: installing redis-server with apt-get" >&2
  apt_install redis-server
fi
