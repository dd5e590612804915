#!/usr/bin/env bash
# Install or upgrade edgewatch on a Debian box booted with systemd; manage device logins.
#
#   sudo deploy/install.sh [--with-mosquitto] [--trusted-key PUB.pem]... [--bundles DIR]
#                          [--ca-bundle FILE] [--pip-arg ARG]...
#   sudo deploy/install.sh add-device NAME [--password-file FILE]
#   sudo deploy/install.sh remove-device NAME
#
# Install: an `edgewatch` system user, a venv in /opt/edgewatch with the `edge` extra, the
# bundles, configs in /etc/edgewatch (kept if present), the units, and (--with-mosquitto)
# the broker settings, ACL and the agent's and bridge's MQTT logins. Each config is checked
# the way systemd will run it (as the service user, secrets through LoadCredential) before
# anything is enabled; the script exits non-zero, naming what is missing, otherwise.
# Re-running upgrades the code and keeps configs, credentials, device logins and the spool.
#
#   --trusted-key PUB   trust this public key for model bundles (repeat during a rotation).
#                       Given, the keys make up the whole trusted set (leaving the old key
#                       out revokes it); not given, the installed set is kept (first install:
#                       the DEVELOPMENT key, with a warning).
#   --bundles DIR       install the *.ewb bundles of DIR (signed with your production key:
#                       `edgewatch-models sign`) instead of the shipped, dev-signed ones.
#   --ca-bundle FILE    CA bundle pip trusts (a box behind a TLS-inspecting proxy).
#   --pip-arg ARG       passed to every pip install, e.g. --pip-arg=--index-url=URL.
#                       pip's own PIP_* variables work too (sudo --preserve-env=PIP_INDEX_URL).
#
# add-device NAME creates (or re-keys) the Mosquitto login NAME; the ACL lets it publish on
# edge/NAME/raw/# only. Its password is read from --password-file or generated and printed
# on stdout, once.
set -euo pipefail

PREFIX=/opt/edgewatch
ETC=/etc/edgewatch
MOSQUITTO_PASSWD="${EDGEWATCH_MOSQUITTO_PASSWD:-/etc/mosquitto/edgewatch.passwd}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
SERVICES=(agent bridge)

die() { echo "install.sh: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
systemd_running() { [ -d /run/systemd/system ]; }

reload_mosquitto() {
  if systemd_running && systemctl is-active -q mosquitto; then systemctl reload mosquitto; fi
}

add_device() {
  local name="$1" password_file="${2:-}" password
  [[ "$name" =~ ^[A-Za-z0-9_.-]{1,64}$ ]] || die "device name must match [A-Za-z0-9_.-]{1,64}"
  case "$name" in
    edgewatch-*|models) die "device name $name is reserved" ;;
  esac
  command -v mosquitto_passwd >/dev/null || die "mosquitto_passwd not found (install mosquitto)"
  if [ -n "$password_file" ]; then
    password="$(head -n 1 "$password_file")"
    [ -n "$password" ] || die "$password_file is empty"
  else
    password="$(head -c 24 /dev/urandom | base64)"
  fi
  [ -f "$MOSQUITTO_PASSWD" ] || install -m 0640 /dev/null "$MOSQUITTO_PASSWD"
  mosquitto_passwd -b "$MOSQUITTO_PASSWD" "$name" "$password"
  reload_mosquitto
  echo "device $name may publish on edge/$name/raw/#" >&2
  [ -n "$password_file" ] || echo "$password"
}

remove_device() {
  mosquitto_passwd -D "$MOSQUITTO_PASSWD" "$1"
  reload_mosquitto
}

case "${1:-}" in
  add-device)
    [ $# -ge 2 ] || { usage; exit 2; }
    name="$2"; shift 2; password_file=""
    while [ $# -gt 0 ]; do
      case "$1" in
        --password-file) password_file="$2"; shift ;;
        *) die "unknown option $1" ;;
      esac
      shift
    done
    add_device "$name" "$password_file"; exit 0 ;;
  remove-device)
    [ $# -eq 2 ] || { usage; exit 2; }
    remove_device "$2"; exit 0 ;;
esac

WITH_MOSQUITTO=0
TRUSTED_KEYS=()
BUNDLES="$REPO/models/bundles"
PIP_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --with-mosquitto) WITH_MOSQUITTO=1 ;;
    --trusted-key) TRUSTED_KEYS+=("$(realpath "$2")"); shift ;;
    --bundles) BUNDLES="$(realpath "$2")"; shift ;;
    --ca-bundle) export PIP_CERT; PIP_CERT="$(realpath "$2")"; shift ;;
    --pip-arg) PIP_ARGS+=("$2"); shift ;;
    --pip-arg=*) PIP_ARGS+=("${1#--pip-arg=}") ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
  shift
done
[ "$(id -u)" -eq 0 ] || die "run as root"
for key in "${TRUSTED_KEYS[@]}"; do [ -r "$key" ] || die "cannot read trusted key $key"; done
compgen -G "$BUNDLES/*.ewb" >/dev/null || die "no *.ewb bundles in $BUNDLES"

# -- packages, user, code ------------------------------------------------------------------
packages=(python3 python3-venv)
[ "$WITH_MOSQUITTO" -eq 0 ] || packages+=(mosquitto)
if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
fi
id edgewatch >/dev/null 2>&1 || \
  useradd --system --home-dir /var/lib/edgewatch --no-create-home --shell /usr/sbin/nologin edgewatch

python3 -m venv "$PREFIX/venv"
pip=("$PREFIX/venv/bin/pip" --disable-pip-version-check -q)
wheels="$(mktemp -d)"
trap 'rm -rf "$wheels"' EXIT
# Build edgewatch's wheel with the venv's own setuptools (no throwaway build environment).
"${pip[@]}" install "${PIP_ARGS[@]}" "setuptools>=68" wheel
"${pip[@]}" wheel "${PIP_ARGS[@]}" --no-deps --no-build-isolation --wheel-dir "$wheels" "$REPO"
wheel="$(echo "$wheels"/edgewatch-*.whl)"
# The wheel's content digest (zip timestamps aside): an unchanged tree is not installed again.
digest="$("$PREFIX/venv/bin/python" - "$wheel" <<'PY'
import hashlib, sys, zipfile
digest = hashlib.sha256()
with zipfile.ZipFile(sys.argv[1]) as wheel:
    for name in sorted(wheel.namelist()):
        if not name.endswith(".dist-info/RECORD"):
            digest.update(name.encode() + b"\0" + wheel.read(name))
print(digest.hexdigest())
PY
)"
if [ "$(cat "$PREFIX/.installed-wheel" 2>/dev/null)" != "$digest" ]; then
  "${pip[@]}" install "${PIP_ARGS[@]}" "$wheel[edge]"
  # An upgrade from a tree of the same version number: replace edgewatch's own files.
  "${pip[@]}" install "${PIP_ARGS[@]}" --no-deps --force-reinstall "$wheel"
  echo "$digest" > "$PREFIX/.installed-wheel"
fi

install -d -m 0755 "$PREFIX/bundles" "$ETC" "$ETC/trusted-keys"
install -d -m 0700 "$ETC/credentials"
install -m 0644 "$REPO/README.md" "$PREFIX/README.md"
for service in "${SERVICES[@]}"; do
  [ -f "$ETC/$service.toml" ] || \
    install -m 0640 -g edgewatch "$REPO/deploy/config/$service.toml" "$ETC/$service.toml"
done

# -- trusted keys and bundles: checked together before either replaces what is installed ---
staged="$wheels/trusted-keys"
mkdir "$staged"
if [ ${#TRUSTED_KEYS[@]} -eq 0 ]; then
  if compgen -G "$ETC/trusted-keys/*.p[eu][mb]" >/dev/null; then
    cp "$ETC"/trusted-keys/*.p[eu][mb] "$staged/"
  else
    echo "WARNING: no --trusted-key given; trusting the DEVELOPMENT key (not for production)" >&2
    TRUSTED_KEYS=("$REPO/models/bundles/dev-signing-key.DEVELOPMENT-ONLY.pub.pem")
  fi
fi
for key in "${TRUSTED_KEYS[@]}"; do
  name="$(basename "$key")"
  [ ! -e "$staged/${name%.pem}.pem" ] || die "two trusted keys named $name: rename one"
  install -m 0644 "$key" "$staged/${name%.pem}.pem"
done
"$PREFIX/venv/bin/python" -m models.signing check --trusted-keys "$staged" "$BUNDLES"/*.ewb ||
  die "a bundle in $BUNDLES is not signed by a trusted key; trusted keys and bundles unchanged"
find "$ETC/trusted-keys" -maxdepth 1 -type f \( -name '*.pem' -o -name '*.pub' \) -delete
install -m 0644 "$staged"/* "$ETC/trusted-keys/"
install -m 0644 "$BUNDLES"/*.ewb "$PREFIX/bundles/"

# -- Mosquitto -----------------------------------------------------------------------------
if [ "$WITH_MOSQUITTO" -eq 1 ]; then
  install -m 0644 "$REPO/deploy/mosquitto/edgewatch.conf" /etc/mosquitto/conf.d/edgewatch.conf
  install -m 0640 -g mosquitto "$REPO/deploy/mosquitto/edgewatch.acl" /etc/mosquitto/edgewatch.acl
  [ -f "$MOSQUITTO_PASSWD" ] || install -m 0640 -g mosquitto /dev/null "$MOSQUITTO_PASSWD"
  chgrp mosquitto "$MOSQUITTO_PASSWD"
  chmod 0640 "$MOSQUITTO_PASSWD"
  for service in "${SERVICES[@]}"; do
    secret="$ETC/credentials/$service-mqtt-password"
    if [ ! -f "$secret" ] || ! grep -q "^edgewatch-$service:" "$MOSQUITTO_PASSWD"; then
      [ -f "$secret" ] || (umask 077; head -c 24 /dev/urandom | base64 > "$secret")
      mosquitto_passwd -b "$MOSQUITTO_PASSWD" "edgewatch-$service" "$(cat "$secret")"
    fi
  done
  if systemd_running; then
    systemctl restart mosquitto || {
      journalctl -u mosquitto -n 20 --no-pager >&2 || true
      die "mosquitto did not start with the edgewatch settings"
    }
  fi
fi
chmod 0700 "$ETC/credentials"
find "$ETC/credentials" -type f -exec chmod 0600 {} +

# -- units ---------------------------------------------------------------------------------
install -m 0644 "$REPO"/deploy/systemd/edgewatch-agent.service \
  "$REPO"/deploy/systemd/edgewatch-bridge.service "$REPO"/deploy/systemd/edgewatch.target \
  /etc/systemd/system/
if ! systemd_running; then
  echo "systemd is not running: units installed, configs not checked, nothing started" >&2
  exit 0
fi
systemctl daemon-reload

# Check each config exactly as its unit will see it: as the service user, with the secrets
# of the unit's LoadCredential= lines in $CREDENTIALS_DIRECTORY.
failed=0
for service in "${SERVICES[@]}"; do
  unit="/etc/systemd/system/edgewatch-$service.service"
  properties=(-p User=edgewatch -p Group=edgewatch)
  while IFS= read -r credential; do
    source="${credential#*:}"
    if [ -f "$source" ]; then
      properties+=(-p "LoadCredential=$credential")
    else
      echo "edgewatch-$service: missing secret $source (one line, mode 0600)" >&2
      failed=1
    fi
  done < <(sed -n 's/^LoadCredential=//p' "$unit")
  systemd-run --quiet --wait --pipe --collect "${properties[@]}" \
    "$PREFIX/venv/bin/edgewatch-$service" validate-config "$ETC/$service.toml" || {
    echo "edgewatch-$service: the check failed (exit $?; systemd's reason: journalctl -n 20)" >&2
    failed=1
  }
done
[ "$failed" -eq 0 ] || die "fix the configuration above, then run install.sh again"

systemctl enable --quiet edgewatch.target edgewatch-agent.service edgewatch-bridge.service
# Restart (or start) waits for each service's READY=1 (Type=notify).
if ! systemctl restart edgewatch-agent.service edgewatch-bridge.service; then
  systemctl --no-pager status edgewatch-agent edgewatch-bridge >&2 || true
  die "a service did not become ready"
fi
systemctl start edgewatch.target
echo "edgewatch installed: systemctl status edgewatch-agent edgewatch-bridge"
