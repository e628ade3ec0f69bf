#!/bin/sh
# salt-cloud's deploy script for the cluster's VMs (profile option `script: pgcluster-minion`).
# salt-cloud renders it (Jinja: vm, opts, minion), uploads it over SSH beside the minion's
# config and keys (minion, minion.pem, minion.pub), and runs it with sudo. It installs the
# master's Salt from the package index the VM's pip is set to (PyPI on Yandex Cloud; the
# emulated cloud's mirror in the lab), lays the config and keys, and starts the minion.
# The master has already accepted the key. Keep the version equal to requirements.txt's.
set -eu
SALT_VERSION=3008.4
VENV=/opt/pgcluster/salt
HERE=$(cd "$(dirname "$0")" && pwd)
NAME={{ vm['name'] }}
LOG=/var/log/pgcluster-bootstrap.log

fail() {
    echo "pgcluster bootstrap of $NAME: $*" >&2
    # Also on the serial console, where the driver reads it back (serialPortOutput) to say why.
    echo "pgcluster bootstrap of $NAME failed: $*" >/dev/console 2>/dev/null || true
    exit 1
}

# 1. The package sources. A VM without a way out (no public address, and a subnet not routed
#    through a NAT gateway) cannot reach them: say so, rather than fail later in the middle.
: >"$LOG"
# apt-get update exits 0 when a source only warns that it failed: read what it said.
updated=0
DEBIAN_FRONTEND=noninteractive apt-get update -q -o Acquire::http::Timeout=10 \
    -o Acquire::Retries=1 >>"$LOG" 2>&1 || updated=$?
if [ "$updated" -ne 0 ] || grep -qE '^(W|E): (Failed to fetch|Some index files failed)' "$LOG"; then
    said=$(grep -E '^(E|W):' "$LOG" | head -n 2 | tr '\n' ' ')
    if grep -qE 'Could not connect|Connection timed out|Unable to connect|unreachable|Temporary failure resolving' "$LOG"; then
        sources=$(grep -rhoE '(https?|ftp)://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d 2>/dev/null \
                  | sort -u | tr '\n' ' ')
        fail "cannot reach the package sources (${sources% }): the VM has no egress to the internet." \
             "Give its subnet a route through a NAT gateway (the provider's network: nat_gateway: true," \
             "then salt-cloud -f ensure_network yandex) or the VM a public address (nat: true)." \
             "apt said: $said"
    fi
    fail "apt-get update failed: $said"
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv >>"$LOG" 2>&1 \
    || fail "apt-get install python3-venv failed: $(tail -n 3 "$LOG" | tr '\n' ' ')"

# 2. Salt, in a virtual environment of Debian's python3 (the version the master runs).
if ! "$VENV/bin/python" -c "import salt.version as v; assert v.__version__ == '$SALT_VERSION'" 2>/dev/null; then
    python3 -m venv "$VENV" >>"$LOG" 2>&1 || fail "python3 -m venv $VENV failed"
    "$VENV/bin/pip" install -q --disable-pip-version-check "salt==$SALT_VERSION" >>"$LOG" 2>&1 \
        || fail "pip install salt==$SALT_VERSION failed: $(tail -n 3 "$LOG" | tr '\n' ' ')"
fi
for tool in salt-call salt-minion; do
    ln -sf "$VENV/bin/$tool" "/usr/local/bin/$tool"
done

# 3. The minion's config and the key pair salt-cloud made (its public half already accepted).
install -d -m 0755 /etc/salt
install -d -m 0700 /etc/salt/pki /etc/salt/pki/minion
install -m 0644 "$HERE/minion" /etc/salt/minion
install -m 0400 "$HERE/minion.pem" /etc/salt/pki/minion/minion.pem
install -m 0644 "$HERE/minion.pub" /etc/salt/pki/minion/minion.pub

# 4. The service.
cat >/etc/systemd/system/salt-minion.service <<UNIT
[Unit]
Description=The Salt Minion (pgcluster: salt==$SALT_VERSION from the package index)
Documentation=man:salt-minion(1)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
KillMode=process
Restart=on-failure
RestartSec=2
LimitNOFILE=8192
ExecStart=$VENV/bin/salt-minion -c /etc/salt

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable salt-minion.service >>"$LOG" 2>&1
systemctl restart salt-minion.service
echo "pgcluster bootstrap of $NAME: salt-minion $SALT_VERSION started"
