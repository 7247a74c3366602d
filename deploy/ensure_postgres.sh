#!/usr/bin/env bash
# Makes sure the PostgreSQL server binaries (initdb, pg_ctl, postgres) are installed, for the throwaway
# server the tests start on loopback (tests/pg_server.py). Does nothing when initdb is found; otherwise
# installs Debian's `postgresql` package with apt-get, without creating or starting the package's
# system-wide "main" cluster (the tests run their own server, as an unprivileged user, in a temp dir).
#
# Usage: deploy/ensure_postgres.sh   (root, or a user with sudo)
set -euo pipefail

# The same places tests/pg_server.py looks in, in the same order.
find_initdb() {
    local dir
    if [[ -n "${RCSD_PG_BINDIR:-}" && -x "$RCSD_PG_BINDIR/initdb" ]]; then
        echo "$RCSD_PG_BINDIR/initdb"; return 0
    fi
    if command -v pg_config >/dev/null 2>&1 && dir="$(pg_config --bindir 2>/dev/null)" && [[ -x "$dir/initdb" ]]; then
        echo "$dir/initdb"; return 0
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5 -V -r); do
        if [[ -x "$dir/initdb" ]]; then echo "$dir/initdb"; return 0; fi
    done
    command -v initdb 2>/dev/null
}

if initdb="$(find_initdb)"; then
    exit 0
fi

if [[ "$(id -u)" -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "ensure_postgres: initdb not found and not root (no sudo): install Debian's 'postgresql' package" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_postgres: initdb not found and no apt-get: install the PostgreSQL server (initdb, pg_ctl," \
         "postgres) and set RCSD_PG_BINDIR to its bin folder" >&2
    exit 1
fi

echo "ensure_postgres: installing Debian's postgresql package" >&2
# postgresql-common reads createcluster.d/: keep the package from creating and starting a cluster on :5432.
"${as_root[@]}" mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" \
    | "${as_root[@]}" tee /etc/postgresql-common/createcluster.d/rcsd-no-main-cluster.conf >/dev/null
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql

if ! initdb="$(find_initdb)"; then
    echo "ensure_postgres: installed 'postgresql' but still no initdb" >&2
    exit 1
fi
echo "ensure_postgres: $initdb" >&2
