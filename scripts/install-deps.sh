#!/usr/bin/env bash
# Install what the demo and the tests need on a fresh Debian machine (run as root):
# Java and ActiveMQ Classic, ActiveMQ Artemis (from Maven Central, with Maven), RabbitMQ,
# the Jolokia JVM agent (Maven Central), promtool (Debian's prometheus), rpmbuild,
# systemd-analyze, PostgreSQL, tmux (the `fleet --watch` test), and the Python package with its test extras.
# Safe to run again: it installs only what is missing.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
command -v java >/dev/null 2>&1 || need+=(default-jre-headless)
[ -f /usr/share/activemq/bin/activemq.jar ] || need+=(activemq)
command -v rpmbuild >/dev/null 2>&1 || need+=(rpm)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
command -v rabbitmq-server >/dev/null 2>&1 || need+=(rabbitmq-server)
command -v mvn >/dev/null 2>&1 || need+=(maven)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
    echo "install-deps: installing ${need[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# ActiveMQ Artemis: the binary distribution from Maven Central, kept in Maven's local
# repository (~/.m2) and unpacked under /opt/artemis, where postprocessing.devtools looks.
ARTEMIS_VERSION=2.40.0
ARTEMIS_ROOT=${PP_ARTEMIS_ROOT:-/opt/artemis}
if [ ! -x "$ARTEMIS_ROOT/apache-artemis-$ARTEMIS_VERSION/bin/artemis" ]; then
    echo "install-deps: fetching apache-artemis $ARTEMIS_VERSION from Maven Central"
    tmp=$(mktemp -d)
    mvn -q -B dependency:copy -Dartifact="org.apache.activemq:apache-artemis:$ARTEMIS_VERSION:tar.gz:bin" \
        -DoutputDirectory="$tmp"
    mkdir -p "$ARTEMIS_ROOT"
    tar -xzf "$tmp/apache-artemis-$ARTEMIS_VERSION-bin.tar.gz" -C "$ARTEMIS_ROOT"
    rm -rf "$tmp"
fi

# The Jolokia JVM agent, from Maven Central, under /opt/jolokia: Debian's ActiveMQ Classic has
# no web console, so the test broker serves its JMX beans to the queue-depth reader this way.
JOLOKIA_VERSION=2.1.1
JOLOKIA_ROOT=${PP_JOLOKIA_ROOT:-/opt/jolokia}
if [ ! -f "$JOLOKIA_ROOT/jolokia-agent-jvm-$JOLOKIA_VERSION-javaagent.jar" ]; then
    echo "install-deps: fetching the Jolokia JVM agent $JOLOKIA_VERSION from Maven Central"
    mkdir -p "$JOLOKIA_ROOT"
    mvn -q -B dependency:copy -Dartifact="org.jolokia:jolokia-agent-jvm:$JOLOKIA_VERSION:jar:javaagent" \
        -DoutputDirectory="$JOLOKIA_ROOT"
fi

# PostgreSQL: a running cluster and a superuser role for the current user.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
user=$(id -un)
if command -v runuser >/dev/null 2>&1; then
    runuser -u postgres -- psql -qtAc "SELECT 1 FROM pg_roles WHERE rolname='$user'" | grep -q 1 \
        || runuser -u postgres -- psql -qc "CREATE ROLE \"$user\" SUPERUSER LOGIN"
fi

# RabbitMQ is installed, not started: the demo, the tests and the benches run private nodes of
# their own (postprocessing/devtools/rabbitmq_local.py), with their plugins, data and logs in
# their work directories, so a machine's RabbitMQ service and whatever it holds play no part.

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
