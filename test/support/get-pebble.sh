#!/usr/bin/env bash
# Brings Pebble 2.10 (Let's Encrypt's test CA, with ARI and profiles) from Debian's
# sid suite into node_modules/.cache/fastify-autocert/pebble-2.10/ (or
# $PEBBLE_2_10_DIR), without touching the system's apt sources or state: apt runs
# on a private source list, list and cache directories in a temporary directory,
# and the package is only unpacked (`dpkg -x`), never installed. Its binaries are
# static (they need libc 2.34+), so they run on Debian stable.
# Exits at once when the binaries are already there. Works as root or not.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${PEBBLE_2_10_DIR:-$root/node_modules/.cache/fastify-autocert/pebble-2.10}"
bin="$out/usr/bin"

if [[ -x "$bin/pebble" && -x "$bin/pebble-challtestsrv" && -f "$out/VERSION" ]]; then
  exit 0
fi

for cmd in apt-get dpkg dpkg-deb; do
  if ! command -v "$cmd" >/dev/null; then
    echo "get-pebble: $cmd not found: Pebble 2.10 comes from Debian's archive (or set PEBBLE_VERSION=2.4 to use the pebble on PATH)" >&2
    exit 1
  fi
done
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
if [[ ! -r "$keyring" ]]; then
  echo "get-pebble: $keyring not found (package debian-archive-keyring)" >&2
  exit 1
fi

# The mirror this machine already uses (the first URIs line of its deb822 sources).
uri=""
if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
  uri="$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources | head -n 1)"
fi
uri="${uri:-http://deb.debian.org/debian}"

mkdir -p "$(dirname "$out")"
work="$(mktemp -d "${TMPDIR:-/tmp}/fastify-autocert-pebble.XXXXXX")"
# Unpacked next to $out, so that the final move is a rename on one file system.
stage="$(mktemp -d "$(dirname "$out")/.pebble-2.10.XXXXXX")"
trap 'rm -rf "$work" "$stage"' EXIT

mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/preferences.d" "$work/download"
cat >"$work/sid.sources" <<EOF
Types: deb
URIs: $uri
Suites: sid
Components: main
Signed-By: $keyring
EOF
# As root, apt downloads as the unprivileged user _apt: let it into the directories
# it writes (as apt does with its own partial/ directories). Nobody else can write there.
if [[ "$(id -u)" == 0 ]] && id _apt >/dev/null 2>&1; then
  chmod 755 "$work"
  chown _apt "$work/lists/partial" "$work/cache/archives/partial" "$work/download"
fi

apt_opts=(
  -o "Dir::Etc::SourceList=/dev/null"
  -o "Dir::Etc::SourceParts=$work"
  -o "Dir::Etc::Preferences=/dev/null"
  -o "Dir::Etc::PreferencesParts=$work/preferences.d"
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache=$work/cache"
  -o "Acquire::Languages=none"
)
# Every lock apt takes for update and download is in the private directories, so a
# user who is not root needs no -o Debug::NoLocking=1 (checked as nobody).

log="$work/apt.log"
if ! apt-get "${apt_opts[@]}" -q update >"$log" 2>&1 ||
   ! (cd "$work/download" && apt-get "${apt_opts[@]}" -q download pebble) >>"$log" 2>&1; then
  cat "$log" >&2
  echo "get-pebble: could not download pebble from $uri (suite sid)" >&2
  exit 1
fi

deb="$(echo "$work"/download/pebble_*.deb)"
version="$(dpkg-deb -f "$deb" Version)"
dpkg -x "$deb" "$stage"

# The binaries must run here: pebble prints its version (`dev` in Debian's build),
# challtestsrv has no such flag, but its usage must list the 2.10 -dnsserver flag. (Read
# whole, not piped into grep -q: that may end the writer by SIGPIPE, a failure under pipefail.)
if ! "$stage/usr/bin/pebble" -version >/dev/null 2>&1; then
  echo "get-pebble: $stage/usr/bin/pebble from pebble $version does not run on this machine" >&2
  exit 1
fi
usage="$("$stage/usr/bin/pebble-challtestsrv" -h 2>&1 || true)"
if [[ "$usage" != *-dnsserver* ]]; then
  echo "get-pebble: $stage/usr/bin/pebble-challtestsrv from pebble $version does not run on this machine" >&2
  exit 1
fi
# Written last: a directory without it was never finished.
echo "$version" >"$stage/VERSION"

chmod 755 "$stage"
# A copy without VERSION is one left half-made by hand: replace it. (Ours appear
# whole, by rename.)
if [[ -e "$out" && ! -f "$out/VERSION" ]]; then
  rm -rf "$out"
fi
if ! mv -T "$stage" "$out" 2>/dev/null; then
  # Another run got there first: its copy is as good as ours.
  [[ -f "$out/VERSION" ]] || { echo "get-pebble: could not move Pebble into $out" >&2; exit 1; }
fi
echo "get-pebble: Pebble $version (Debian sid, $uri) in $bin"
