#!/usr/bin/env bash
# Install the pgvector extension for the local PostgreSQL server, building it from Debian trixie's source package.
#
# Debian 12 ships no pgvector package for PostgreSQL 15, but trixie's source package builds against it in seconds.
# The source is fetched with a private apt state (its own sources list, lists and cache in a temporary directory),
# so the system's apt sources are never changed. The mirror is the one the system's apt configuration already uses.
#
# Idempotent: exits at once when the server already offers the `vector` extension. Run as root.
#
# Environment (all optional):
#   PGHOST, PGPORT, PGUSER, PGDATABASE  the server to check and verify against (default 127.0.0.1, 5432, postgres, test)
#   PG_MAJOR                            PostgreSQL major version to build for (default: asked of the server)
#   PG_CONFIG                           pg_config to build with (default: the one of PG_MAJOR)
#   PGVECTOR_APT_MIRROR                 Debian mirror to fetch the source from (default: read from apt's sources)
#   PGVECTOR_SUITE                      Debian suite holding the source package (default: trixie)
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
export PGDATABASE="${PGDATABASE:-test}"
SUITE="${PGVECTOR_SUITE:-trixie}"
APT_ETC="$(apt-config shell D Dir::Etc/d 2>/dev/null | sed -n "s/^D='\(.*\)'$/\1/p")"
APT_ETC="${APT_ETC:-/etc/apt/}"
started=$SECONDS

say() { printf 'install-pgvector: %s\n' "$*"; }
die() {
  printf 'install-pgvector: ERROR: %s\n' "$*" >&2
  exit 1
}

[[ $EUID -eq 0 ]] || die "must run as root (it installs packages and writes into PostgreSQL's directories)"

# -- What is there already ---------------------------------------------------------------------------------------

server_query() { psql -X -q -A -t -v ON_ERROR_STOP=1 -c "$1" 2>/dev/null; }

server_up=false
if server_query 'SELECT 1' >/dev/null; then
  server_up=true
fi

if [[ -z "${PG_MAJOR:-}" ]]; then
  if $server_up; then
    num="$(server_query 'SHOW server_version_num')"
    PG_MAJOR=$((num / 10000))
  else
    say "server at $PGHOST:$PGPORT is not reachable; taking the major version from pg_config/psql"
    version="$( (pg_config --version || psql -V) 2>/dev/null | head -n1)"
    PG_MAJOR="$(sed -n 's/^[^0-9]*\([0-9][0-9]*\).*/\1/p' <<<"$version")"
  fi
fi
[[ "$PG_MAJOR" =~ ^[0-9]+$ ]] || die "could not tell PostgreSQL's major version (set PG_MAJOR)"

# Debian keeps one pg_config per major version; the pg_config on PATH may belong to libpq-dev of another one.
find_pg_config() {
  if [[ -n "${PG_CONFIG_GIVEN:-}" ]]; then
    printf '%s' "$PG_CONFIG_GIVEN"
  elif [[ -x "/usr/lib/postgresql/$PG_MAJOR/bin/pg_config" ]]; then
    printf '%s' "/usr/lib/postgresql/$PG_MAJOR/bin/pg_config"
  else
    command -v pg_config || true
  fi
}
PG_CONFIG_GIVEN="${PG_CONFIG:-}"
PG_CONFIG="$(find_pg_config)"

if $server_up && [[ "$(server_query "SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'")" == 1 ]]; then
  say "PostgreSQL $PG_MAJOR already offers the vector extension; nothing to do"
  exit 0
fi
if [[ -n "$PG_CONFIG" ]] && sharedir="$("$PG_CONFIG" --sharedir 2>/dev/null)" \
  && [[ -f "$sharedir/extension/vector.control" ]]; then
  say "vector.control already exists in $sharedir/extension; nothing to do"
  exit 0
fi

say "pgvector is not installed for PostgreSQL $PG_MAJOR: building it from Debian $SUITE's source package"

# -- Tools ---------------------------------------------------------------------------------------------------------

apt_install() {
  say "apt-get install $*"
  if ! apt-get install -y -q --no-install-recommends "$@"; then
    say "install failed; refreshing the system's package lists and retrying"
    apt-get update -q || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends "$@" || die "could not install: $*"
  fi
}

need=()
command -v dpkg-source >/dev/null 2>&1 || need+=(dpkg-dev)
command -v make >/dev/null 2>&1 || need+=(make)
command -v cc >/dev/null 2>&1 || need+=(gcc)
dpkg-query -W -f='${Status}' "postgresql-server-dev-$PG_MAJOR" 2>/dev/null | grep -q 'install ok installed' \
  || need+=("postgresql-server-dev-$PG_MAJOR")
if ((${#need[@]})); then
  apt_install "${need[@]}"
fi
PG_CONFIG="$(find_pg_config)"
[[ -n "$PG_CONFIG" ]] || die "pg_config not found after installing postgresql-server-dev-$PG_MAJOR"
[[ "$("$PG_CONFIG" --version)" == "PostgreSQL $PG_MAJOR."* ]] \
  || die "$PG_CONFIG is for $("$PG_CONFIG" --version), not PostgreSQL $PG_MAJOR (set PG_CONFIG)"

# -- The mirror apt already uses ------------------------------------------------------------------------------------

# shellcheck source=/dev/null
codename="$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")"

# One-line format: `deb [options] URI suite components...`. Prints the URIs of entries for the release's own suite.
oneline_uris() {
  awk -v want="$codename" '
    /^[[:space:]]*(deb|deb-src)[[:space:]]/ {
      sub(/#.*/, "")
      line = $0
      gsub(/\[[^]]*\]/, "", line)
      n = split(line, f, /[[:space:]]+/)
      i = (f[1] == "") ? 2 : 1
      uri = f[i + 1]; suite = f[i + 2]
      if (suite == want || suite == "stable") print uri
    }' "$@" 2>/dev/null || true
}

# deb822 format: paragraphs with `URIs:` and `Suites:` fields (continuation lines start with whitespace).
deb822_uris() {
  awk -v want="$codename" '
    function flush(   n, s, u, i, j, ok) {
      if (enabled != "no" && uris != "") {
        n = split(suites, s, /[[:space:]]+/)
        ok = 0
        for (i = 1; i <= n; i++) if (s[i] == want || s[i] == "stable") ok = 1
        if (ok) { n = split(uris, u, /[[:space:]]+/); for (j = 1; j <= n; j++) if (u[j] != "") print u[j] }
      }
      uris = ""; suites = ""; enabled = ""; field = ""
    }
    /^#/ { next }
    /^[[:space:]]*$/ { flush(); next }
    /^[[:space:]]/ { if (field == "uris") uris = uris " " $0; else if (field == "suites") suites = suites " " $0; next }
    {
      field = tolower($0); sub(/:.*/, "", field)
      value = $0; sub(/^[^:]*:[[:space:]]*/, "", value)
      if (field == "uris") uris = value
      else if (field == "suites") suites = value
      else if (field == "enabled") enabled = tolower(value)
    }
    END { flush() }' "$@" 2>/dev/null || true
}

mirror="${PGVECTOR_APT_MIRROR:-}"
if [[ -z "$mirror" ]]; then
  shopt -s nullglob
  list_files=()
  [[ -f "${APT_ETC}sources.list" ]] && list_files+=("${APT_ETC}sources.list")
  list_files+=("${APT_ETC}"sources.list.d/*.list)
  deb822_files=("${APT_ETC}"sources.list.d/*.sources)
  shopt -u nullglob
  candidates="$(
    { ((${#list_files[@]})) && oneline_uris "${list_files[@]}"; ((${#deb822_files[@]})) && deb822_uris "${deb822_files[@]}"; } \
      | grep -E '^(https?|ftp)://' | grep -v -i 'security' || true
  )"
  mirror="$(head -n1 <<<"$candidates")"
fi
[[ -n "$mirror" ]] || die "no Debian mirror found for '$codename' in ${APT_ETC}sources.list or ${APT_ETC}sources.list.d/ \
(set PGVECTOR_APT_MIRROR)"
mirror="${mirror%/}"
say "using mirror $mirror (from the system's apt configuration)"

# -- Fetch and build with a private apt state -----------------------------------------------------------------------

work="$(mktemp -d -t install-pgvector.XXXXXX)"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work" # apt downloads as the unprivileged _apt user, which must be able to enter it
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/src"
if id -u _apt >/dev/null 2>&1; then chown _apt "$work/src"; fi
printf 'deb-src %s %s main\n' "$mirror" "$SUITE" >"$work/sources.list"

apt_private=(
  -o "Dir::Etc::sourcelist=$work/sources.list"
  -o "Dir::Etc::sourceparts=-"
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache=$work/cache"
  -o "APT::Get::List-Cleanup=0"
)
say "apt-get update (private state, deb-src $mirror $SUITE main)"
apt-get -q "${apt_private[@]}" update || die "apt-get update of the private $SUITE source list failed"

say "apt-get source pgvector"
(cd "$work/src" && apt-get -q "${apt_private[@]}" source pgvector) \
  || die "apt-get source pgvector failed (is pgvector in $SUITE on $mirror?)"
srcdir="$(find "$work/src" -mindepth 1 -maxdepth 1 -type d -name 'pgvector-*' | head -n1)"
[[ -n "$srcdir" ]] || die "apt-get source did not unpack a pgvector-* directory"
say "building $(basename "$srcdir") with $PG_CONFIG"

# OPTFLAGS="" drops pgvector's default -march=native, so the build runs on any CPU of the same architecture.
make -C "$srcdir" -j "$(nproc 2>/dev/null || echo 2)" OPTFLAGS="" PG_CONFIG="$PG_CONFIG" \
  || die "building pgvector failed"
make -C "$srcdir" OPTFLAGS="" PG_CONFIG="$PG_CONFIG" install || die "make install failed"

sharedir="$("$PG_CONFIG" --sharedir)"
[[ -f "$sharedir/extension/vector.control" ]] || die "make install did not put vector.control into $sharedir/extension"

# -- Verify -----------------------------------------------------------------------------------------------------------

if ! $server_up && ! server_query 'SELECT 1' >/dev/null; then
  die "pgvector installed into $sharedir, but the server at $PGHOST:$PGPORT is unreachable, so it was not verified"
fi
# Created inside a transaction that is rolled back: proves the server can load it without leaving it behind.
version="$(psql -X -q -A -t -v ON_ERROR_STOP=1 \
  -c 'BEGIN' \
  -c 'CREATE EXTENSION IF NOT EXISTS vector' \
  -c "SELECT extversion FROM pg_extension WHERE extname = 'vector'" \
  -c 'ROLLBACK')" || die "pgvector was installed but CREATE EXTENSION vector failed on $PGHOST:$PGPORT/$PGDATABASE"
say "pgvector $version installed for PostgreSQL $PG_MAJOR and verified on $PGHOST:$PGPORT/$PGDATABASE \
in $((SECONDS - started))s"
