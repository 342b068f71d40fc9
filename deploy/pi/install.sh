#!/usr/bin/env bash
# Install the edgeloop edge daemon on a Raspberry Pi (64-bit Raspberry Pi OS,
# Python 3.11) or any Linux box, as a systemd service.
#
#   sudo ./install.sh /path/to/edgeloop-source-or-wheel /path/to/signing.pub
#
# Then edit /etc/edgeloop/edge.toml (device_id, fleet, redis_url) and
#   sudo systemctl enable --now edgeloop-edge
# Set RUNTIME=tflite-runtime to use tflite-runtime 2.14 instead of ai-edge-litert.
set -euo pipefail

src=${1:?usage: install.sh SOURCE_DIR_OR_WHEEL PUBLIC_KEY}
pub=${2:?usage: install.sh SOURCE_DIR_OR_WHEEL PUBLIC_KEY}
extra=edge
[ "${RUNTIME:-}" = "tflite-runtime" ] && extra=edge-tflite
here=$(cd "$(dirname "$0")" && pwd)

id -u edgeloop >/dev/null 2>&1 || useradd --system --home /var/lib/edgeloop --shell /usr/sbin/nologin edgeloop
install -d -o edgeloop -g edgeloop -m 0750 /var/lib/edgeloop
install -d -m 0755 /etc/edgeloop /opt/edgeloop

python3 -m venv /opt/edgeloop/venv
/opt/edgeloop/venv/bin/pip install --quiet --upgrade pip
/opt/edgeloop/venv/bin/pip install --quiet "${src}[${extra}]"

install -m 0644 "$pub" /etc/edgeloop/signing.pub
if [ ! -f /etc/edgeloop/edge.toml ]; then
  sed -e "s/^device_id = .*/device_id = \"$(hostname)\"/" "$here/../examples/edge.toml" > /etc/edgeloop/edge.toml
  chmod 0640 /etc/edgeloop/edge.toml
  chgrp edgeloop /etc/edgeloop/edge.toml
fi
install -m 0644 "$here/edgeloop-edge.service" /etc/systemd/system/edgeloop-edge.service
systemctl daemon-reload
echo "installed; edit /etc/edgeloop/edge.toml, then: systemctl enable --now edgeloop-edge"
echo "health check: /opt/edgeloop/venv/bin/edgeloop-edge --config /etc/edgeloop/edge.toml --check"
