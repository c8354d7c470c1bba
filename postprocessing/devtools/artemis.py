"""A private ActiveMQ Artemis broker for tests, the demo and the benchmark.

``artemis create`` makes an instance directory from the distribution that
``scripts/install-deps.sh`` fetched from Maven Central; its ``etc/broker.xml`` is replaced by
the SNS-style ``artemis/broker.xml`` beside this module (the file docker-compose.yml runs),
with free ports, data directory and HA role passed as system properties.  Two instances
that share one store directory, one ``primary`` and one ``backup``, form a shared-store HA
pair.  Users: ``icat`` (the agent) and ``workflow`` (the workflow manager), role ``amq``.
"""

import glob
import os
import shutil
import subprocess
import time
from typing import Dict, List, Optional

from postprocessing.devtools.brokerproc import BrokerProcess, free_port

ARTEMIS_ROOT = os.environ.get("PP_ARTEMIS_ROOT", "/opt/artemis")
BROKER_XML = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artemis", "broker.xml")
USERS = {"icat": "icat", "workflow": "workflow"}


def home() -> Optional[str]:
    """The newest Artemis distribution under ARTEMIS_ROOT, or None."""
    found = sorted(glob.glob(os.path.join(ARTEMIS_ROOT, "apache-artemis-*", "bin", "artemis")))
    return os.path.dirname(os.path.dirname(found[-1])) if found else None


def available() -> bool:
    """Whether Java and an Artemis distribution are installed."""
    return shutil.which("java") is not None and home() is not None


class LocalArtemis(BrokerProcess):
    """One broker process; ``start``/``kill``/``stop`` keep its data between runs.

    ``store`` is the journal directory; give two brokers the same store and the roles
    ``primary`` and ``backup`` for an HA pair.
    """

    kind = "artemis"
    title = "Artemis"

    def __init__(self, workdir: str, port: Optional[int] = None, user: str = "icat", password: str = "icat",
                 name: str = "autoreduce", host: str = "127.0.0.1", role: str = "primary",
                 store: Optional[str] = None, max_delivery_attempts: int = 10,
                 address_settings: str = "", journal_sync: bool = False, web_port: Optional[int] = None) -> None:
        super().__init__(workdir, port, host)
        self.core_port = free_port(host)
        self.user = user
        self.password = password
        self.name = name
        self.role = role
        self.store = os.path.abspath(store or os.path.join(self.workdir, "data"))
        self.max_delivery_attempts = max_delivery_attempts
        #: Extra <address-setting> elements, for tests (for example a small address that refuses sends).
        self.address_settings = address_settings
        #: fdatasync the journal before confirming (the production default); off by default here,
        #: for speed, since a test broker's data need not survive a power cut.
        self.journal_sync = journal_sync
        self.instance = os.path.join(self.workdir, "instance")
        #: The embedded web server (console and Jolokia) on this port; none without it.
        self.web_port = web_port

    @property
    def management_url(self) -> str:
        """The console's Jolokia endpoint, when the broker has a web server."""
        if self.web_port is None:
            return ""
        return "http://%s:%d/console/jolokia" % (self.host, self.web_port)

    def prepare(self) -> None:
        """``artemis create`` the instance, once, with the SNS broker.xml and the users."""
        if os.path.exists(os.path.join(self.instance, "bin", "artemis")):
            return
        distribution = home()
        if distribution is None:
            raise RuntimeError("no Artemis distribution under %s; run scripts/install-deps.sh" % ARTEMIS_ROOT)
        web = ["--no-web"] if self.web_port is None else ["--http-host", self.host, "--http-port", str(self.web_port)]
        with open(self.log_path, "ab") as log:
            created = subprocess.run(
                [os.path.join(distribution, "bin", "artemis"), "create", self.instance, "--silent", "--force",
                 "--user", self.user, "--password", self.password, "--require-login", *web, "--nio",
                 "--no-amqp-acceptor", "--no-mqtt-acceptor", "--no-hornetq-acceptor"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if created.returncode != 0:
            raise RuntimeError("artemis create failed (%d); see %s" % (created.returncode, self.log_path))
        etc = os.path.join(self.instance, "etc")
        with open(BROKER_XML, encoding="utf-8") as handle:
            xml = handle.read()
        with open(os.path.join(etc, "broker.xml"), "w", encoding="utf-8") as handle:
            handle.write(xml.replace("</address-settings>", self.address_settings + "</address-settings>"))
        users = dict(USERS, **{self.user: self.password})
        with open(os.path.join(etc, "artemis-users.properties"), "w", encoding="utf-8") as handle:
            handle.writelines("%s = %s\n" % item for item in sorted(users.items()))
        with open(os.path.join(etc, "artemis-roles.properties"), "w", encoding="utf-8") as handle:
            handle.write("amq = %s\n" % ",".join(sorted(users)))

    def environment(self) -> Dict[str, str]:
        """The JVM settings: a small heap, and the system properties broker.xml reads."""
        props = {
            "pp.name": self.name, "pp.host": self.host, "pp.stomp.port": self.port, "pp.core.port": self.core_port,
            "pp.store": self.store, "pp.ha.policy": self.role,
            "pp.journal.sync": "true" if self.journal_sync else "false",
            "pp.global.max.size": "64M", "pp.max.delivery.attempts": self.max_delivery_attempts,
        }
        java_args = ["-Xms64m", "-Xmx384m", "-Xss512k", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                     "-Dlog4j2.disableJmx=true", "--add-opens", "java.base/jdk.internal.misc=ALL-UNNAMED"]
        java_args += ["-D%s=%s" % item for item in sorted(props.items())]
        if self.web_port is not None:
            # What artemis.profile would set for the console, which JAVA_ARGS here replaces.
            policy = "file://" + os.path.join(self.instance, "etc", "jolokia-access.xml")
            java_args += ["-Dhawtio.disableProxy=true", "-Dhawtio.realm=activemq", "-Dhawtio.offline=true",
                          "-Dhawtio.rolePrincipalClasses=org.apache.activemq.artemis.spi.core.security.jaas."
                          "RolePrincipal", "-Djolokia.policyLocation=%s" % policy]
        return dict(os.environ, JAVA_ARGS=" ".join(java_args))

    def command(self) -> List[str]:
        return [os.path.join(self.instance, "bin", "artemis"), "run"]

    def cwd(self) -> str:
        return self.instance

    def wait_log(self, text: str, timeout: float = 60.0) -> None:
        """Until the broker's log contains ``text`` (a backup says when it is ready to take over)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                if text in handle.read():
                    return
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError("Artemis exited; see %s" % self.log_path)
            time.sleep(0.2)
        raise RuntimeError("Artemis did not log %r in %.0f s; see %s" % (text, timeout, self.log_path))

    def addresses(self) -> List[str]:
        """The broker's addresses, from ``artemis address show`` over the Core acceptor."""
        shown = subprocess.run(
            [os.path.join(self.instance, "bin", "artemis"), "address", "show", "--url",
             "tcp://%s:%d" % (self.host, self.core_port), "--user", self.user, "--password", self.password],
            capture_output=True, text=True, timeout=120, env=self.environment())
        if shown.returncode != 0:
            raise RuntimeError("artemis address show failed: %s" % shown.stderr.strip()[-500:])
        return [line.strip() for line in shown.stdout.splitlines()[1:] if line.strip()]


def main() -> None:
    """``python -m postprocessing.devtools.artemis DIR [PORT]``: run a broker in the foreground."""
    import sys

    LocalArtemis(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 61613).foreground()


if __name__ == "__main__":
    main()
