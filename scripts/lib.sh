# Helpers for scripts/start and scripts/test (sourced, not run).

# Installs the Debian packages given that are not installed yet.
install_debian_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "Installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  # A policy-rc.d that says 101 keeps Debian from starting the packages' services on install
  # (orthanc's would take port 8042, Qamqor's default): made for the install if absent.
  local policy=/usr/sbin/policy-rc.d made_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -n "$made_policy" ] && $sudo rm -f "$policy"
  return 0
}

# Creates .venv (Python 3.11+) and installs Qamqor into it at the versions locked in
# requirements/ (base.txt, or test.txt with the extra "test"; refreshed by scripts/lock).
install_python_env() {
  local extras="${1:-}"
  local python="${PYTHON:-python3}"
  local lock=requirements/base.txt
  [ "$extras" = test ] && lock=requirements/test.txt
  if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
  fi
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/pip install -q --disable-pip-version-check -r "$lock"
  # Qamqor itself; its dependencies are the locked ones just installed.
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  if [ -n "$extras" ] && [ "$extras" != test ]; then
    .venv/bin/pip install -q --disable-pip-version-check -e ".[$extras]"
  fi
}

# Starts a PostgreSQL cluster in a temporary folder (Debian's binaries), stopped on exit.
start_throwaway_postgres() {
  local bindir
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  local dir
  dir=$(mktemp -d /tmp/qamqor-pg.XXXXXX)
  local port=55432
  chown -R postgres "$dir" 2>/dev/null || true
  local run=""
  [ "$(id -u)" -eq 0 ] && run="runuser -u postgres --"
  $run "$bindir/initdb" -D "$dir/data" -U postgres -A trust >/dev/null
  $run "$bindir/pg_ctl" -D "$dir/data" -o "-p $port -k $dir -c listen_addresses=127.0.0.1" -l "$dir/log" -w start >/dev/null
  $run "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres test
  export QAMQOR_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$port/test"
  # shellcheck disable=SC2064
  trap "$run '$bindir/pg_ctl' -D '$dir/data' -m immediate stop >/dev/null 2>&1; rm -rf '$dir'" EXIT
  echo "Started a throwaway PostgreSQL on port $port"
}

# Fetches the released OHIF viewer build (npm package @ohif/app, its dist/ folder) into
# .cache/ohif-VERSION, for the test that opens Qamqor's studies in it. Needs npm.
fetch_ohif() {
  local version="$1"
  local target=".cache/ohif-$version"
  [ -f "$target/dist/index.html" ] && return 0
  command -v npm >/dev/null || install_debian_packages npm
  local tmp
  tmp=$(mktemp -d)
  echo "Fetching the OHIF viewer $version from the npm registry"
  (cd "$tmp" && npm pack --silent "@ohif/app@$version" >/dev/null)
  mkdir -p "$target"
  tar -xzf "$tmp"/ohif-app-"$version".tgz -C "$target" --strip-components=1 package/dist
  rm -rf "$tmp"
}
