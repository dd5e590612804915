#!/usr/bin/env bash
# Install edgewatch on a Debian-like box: user, venv, configs, Mosquitto, systemd units.
#   sudo deploy/install.sh [--with-mosquitto] [--trusted-key PATH]...
# Idempotent: re-running upgrades the code and keeps existing configs and credentials.
set -euo pipefail

PREFIX=/opt/edgewatch
ETC=/etc/edgewatch
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WITH_MOSQUITTO=0
TRUSTED_KEYS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --with-mosquitto) WITH_MOSQUITTO=1 ;;
    --trusted-key) TRUSTED_KEYS+=("$2"); shift ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }

apt-get update -qq
packages=(python3 python3-venv)
[ "$WITH_MOSQUITTO" -eq 1 ] && packages+=(mosquitto)
apt-get install -y -qq "${packages[@]}"
id edgewatch >/dev/null 2>&1 || useradd --system --home-dir /var/lib/edgewatch --shell /usr/sbin/nologin edgewatch

python3 -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install -q --upgrade pip
"$PREFIX/venv/bin/pip" install -q "$REPO[edge]"

install -d -m 0755 "$PREFIX/bundles" "$ETC" "$ETC/trusted-keys"
install -d -m 0700 "$ETC/credentials"
install -m 0644 "$REPO"/models/bundles/*.ewb "$PREFIX/bundles/"
for config in agent bridge; do
  [ -f "$ETC/$config.toml" ] || install -m 0640 -g edgewatch "$REPO/deploy/config/$config.toml" "$ETC/$config.toml"
done
if [ ${#TRUSTED_KEYS[@]} -eq 0 ]; then
  echo "WARNING: no --trusted-key given; trusting the DEVELOPMENT key (not for production)" >&2
  TRUSTED_KEYS=("$REPO/models/bundles/dev-signing-key.DEVELOPMENT-ONLY.pub.pem")
fi
for key in "${TRUSTED_KEYS[@]}"; do install -m 0644 "$key" "$ETC/trusted-keys/"; done

if [ "$WITH_MOSQUITTO" -eq 1 ]; then
  install -m 0644 "$REPO/deploy/mosquitto/edgewatch.conf" /etc/mosquitto/conf.d/edgewatch.conf
  install -m 0640 -g mosquitto "$REPO/deploy/mosquitto/edgewatch.acl" /etc/mosquitto/edgewatch.acl
  touch /etc/mosquitto/edgewatch.passwd
  for user in edgewatch-agent edgewatch-bridge; do
    secret="$ETC/credentials/${user#edgewatch-}-mqtt-password"
    if [ ! -f "$secret" ]; then
      head -c 24 /dev/urandom | base64 > "$secret"
      mosquitto_passwd -b /etc/mosquitto/edgewatch.passwd "$user" "$(cat "$secret")"
    fi
  done
  chmod 0600 "$ETC"/credentials/*
  systemctl restart mosquitto
fi
for secret in agent-mqtt-password bridge-mqtt-password bridge-kafka-password; do
  [ -f "$ETC/credentials/$secret" ] || echo "NOTE: put the secret in $ETC/credentials/$secret (0600) before starting" >&2
done

install -m 0644 "$REPO"/deploy/systemd/edgewatch-agent.service "$REPO"/deploy/systemd/edgewatch-bridge.service \
  "$REPO"/deploy/systemd/edgewatch.target /etc/systemd/system/
systemctl daemon-reload
"$PREFIX/venv/bin/edgewatch-agent" validate-config "$ETC/agent.toml"
"$PREFIX/venv/bin/edgewatch-bridge" validate-config "$ETC/bridge.toml"
systemctl enable --now edgewatch.target
echo "edgewatch installed: systemctl status edgewatch-agent edgewatch-bridge"
