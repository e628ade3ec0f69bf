#!/bin/sh
# salt-cloud's deploy script for the cluster's VMs (profile option `script: pgcluster-minion`).
# salt-cloud renders it (Jinja: vm, opts, minion), uploads it over SSH beside the minion's
# config and keys (minion, minion.pem, minion.pub), and runs it with sudo. It installs the
# master's Salt from the package index the VM's pip is set to (PyPI on Yandex Cloud; the
# emulated cloud's mirror in the lab), with every dependency at the master's version (the
# constraints below), lays the config and keys, and starts the minion. The master has already
# accepted the key. tests/yandex/test_emulated_cloud.py keeps the versions equal to the
# master's (requirements.txt).
set -eu
SALT_VERSION=3008.4
VENV=/opt/pgcluster/salt
HERE=$(cd "$(dirname "$0")" && pwd)
NAME="{{ vm['name'] }}"
LOG=/var/log/pgcluster-bootstrap.log

fail() {
    echo "pgcluster bootstrap of $NAME: $*" >&2
    # Also on the serial console, where the driver reads it back (serialPortOutput) to say why.
    echo "pgcluster bootstrap of $NAME failed: $*" 2>/dev/null >/dev/console || true
    exit 1
}

# Salt's dependencies at the master's versions (those of requirements.txt), for pip -c.
salt_constraints() {
    cat <<'CONSTRAINTS'
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiosignal==1.4.0
annotated-doc==0.0.7
annotated-types==0.8.0
apache-libcloud==3.9.1
attrs==26.1.0
backports-tarfile==1.2.0
certifi==2026.10.19.post1
cffi==2.1.1
charset-normalizer==3.5.3
cheroot==11.1.2
cherrypy==18.10.0
croniter==7.0.0
cryptography==50.0.2
distlib==0.4.4
distro==1.9.0
filelock==4.3.1
frozenlist==1.8.0
gitdb==4.0.12
gitpython==3.2.1
googleapis-common-protos==1.76.0
idna==3.20
importlib-metadata==10.2.0
jaraco-collections==5.2.1
jaraco-context==6.1.2
jaraco-functools==4.6.0
jaraco-text==4.3.0
jinja2==3.1.6
jmespath==1.1.0
lazy-importer==0.1.0
looseversion==1.3.0
markdown-it-py==4.3.0
markupsafe==3.0.4
mdurl==0.1.2
more-itertools==11.2.1
msgpack==1.2.4
multidict==7.2.1
opentelemetry-api==1.45.2
opentelemetry-exporter-http-transport==0.66b2
opentelemetry-exporter-otlp-common==0.66b2
opentelemetry-exporter-otlp-proto-common==1.45.2
opentelemetry-exporter-otlp-proto-http==1.45.2
opentelemetry-exporter-prometheus==0.66b2
opentelemetry-proto==1.45.2
opentelemetry-sdk==1.45.2
opentelemetry-semantic-conventions==0.66b2
packaging==26.4
platformdirs==4.14.8
portend==3.2.1
prometheus-client==0.26.0
propcache==0.5.4
protobuf==7.36.2
psutil==7.2.2
pyasn1==0.6.5
pycparser==3.12
pycryptodomex==3.24.2
pydantic==2.14.4
pydantic-core==2.50.5
pygments==2.21.0
pyopenssl==26.4.0
python-dateutil==4.0.0
python-discovery==1.9.6
python-gnupg==0.5.7
pyyaml==6.0.4
pyzmq==27.3.0
requests==2.34.2
rich==15.0.0
salt==3008.4
setproctitle==1.3.8
setuptools==66.1.1
shellingham==1.5.4
smmap==5.0.3
tempora==5.13.0
timelib==0.3.0
tornado==6.6.1
truststore==0.10.5
typer==0.29.2
typer-slim==0.24.0
typing-extensions==4.16.0
typing-inspection==0.4.5
tzdata==2026.6
urllib3==2.8.0
virtualenv==21.15.11
xxhash==4.1.0
yarl==1.25.1
zc-lockfile==4.0
zipp==4.1.2
CONSTRAINTS
}

# cloud-init may still be at work (users, keys, its own apt runs) when SSH first answers.
cloud-init status --wait >/dev/null 2>&1 || true
APT="apt-get -q -o DPkg::Lock::Timeout=300"

# 1. The package sources. A VM without a way out (no public address, and a subnet not routed
#    through a NAT gateway) cannot reach them: say so, rather than fail later in the middle.
: >"$LOG"
# apt-get update exits 0 when a source only warns that it failed: read what it said.
updated=0
DEBIAN_FRONTEND=noninteractive $APT update -o Acquire::http::Timeout=10 \
    -o Acquire::Retries=1 >>"$LOG" 2>&1 || updated=$?
if [ "$updated" -ne 0 ] || grep -qE '^(W|E): (Failed to fetch|Some index files failed)' "$LOG"; then
    said=$(grep -E '^(E|W):' "$LOG" | head -n 2 | tr '\n' ' ')
    if grep -qE 'Could not connect|Connection timed out|Unable to connect|unreachable|Temporary failure resolving' "$LOG"; then
        # (Without any user:password@ a source may carry: the console is readable by others.)
        sources=$(grep -rhoE '(https?|ftp)://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d 2>/dev/null \
                  | sed -E 's#//[^/@]*@#//#' | sort -u | tr '\n' ' ')
        fail "cannot reach the package sources (${sources% }): the VM has no egress to the internet." \
             "Give its subnet a route through a NAT gateway (the provider's network: nat_gateway: true," \
             "then salt-cloud -f ensure_network yandex) or the VM a public address (nat: true)." \
             "apt said: $said"
    fi
    fail "apt-get update failed: $said"
fi
DEBIAN_FRONTEND=noninteractive $APT install -y --no-install-recommends python3-venv >>"$LOG" 2>&1 \
    || fail "apt-get install python3-venv failed: $(tail -n 3 "$LOG" | tr '\n' ' ')"

# 2. Salt, in a virtual environment of Debian's python3 (the version the master runs).
if ! "$VENV/bin/python" -c "import salt.version as v; assert v.__version__ == '$SALT_VERSION'" 2>/dev/null; then
    python3 -m venv "$VENV" >>"$LOG" 2>&1 || fail "python3 -m venv $VENV failed"
    salt_constraints >"$HERE/constraints.txt"
    "$VENV/bin/pip" install -q --disable-pip-version-check -c "$HERE/constraints.txt" \
        "salt==$SALT_VERSION" >>"$LOG" 2>&1 \
        || fail "pip install salt==$SALT_VERSION failed: $(tail -n 3 "$LOG" | tr '\n' ' ')"
fi
for tool in salt-call salt-minion; do
    ln -sf "$VENV/bin/$tool" "/usr/local/bin/$tool" || fail "cannot link /usr/local/bin/$tool"
done

# 3. The minion's config and the key pair salt-cloud made (its public half already accepted).
{
    install -d -m 0755 /etc/salt &&
    install -d -m 0700 /etc/salt/pki /etc/salt/pki/minion &&
    install -m 0644 "$HERE/minion" /etc/salt/minion &&
    install -m 0400 "$HERE/minion.pem" /etc/salt/pki/minion/minion.pem &&
    install -m 0644 "$HERE/minion.pub" /etc/salt/pki/minion/minion.pub
} || fail "cannot lay the minion's config and keys in /etc/salt"

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
{
    systemctl daemon-reload &&
    systemctl enable salt-minion.service >>"$LOG" 2>&1 &&
    systemctl restart salt-minion.service
} || fail "salt-minion.service did not start: $(systemctl status --no-pager salt-minion.service 2>&1 | tail -n 3 | tr '\n' ' ')"
echo "pgcluster bootstrap of $NAME: salt-minion $SALT_VERSION started"
