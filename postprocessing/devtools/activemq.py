"""A private ActiveMQ Classic broker for tests, the demo and the benchmark.

It runs Debian's ``activemq`` jar directly (the packaged wrapper forces a 512 MB heap,
logs to /dev/null and switches user), with its own data directory, a STOMP connector
on a free port, the scheduler on (for delayed re-sends), persistence in KahaDB (so a
restart keeps messages) and one authenticated user.
"""

import glob
import os
import shutil
from typing import List, Optional

from postprocessing.devtools.brokerproc import BrokerProcess

ACTIVEMQ_HOME = "/usr/share/activemq"
#: Where scripts/install-deps.sh puts the Jolokia JVM agent (Debian's ActiveMQ has no web console).
JOLOKIA_ROOT = os.environ.get("PP_JOLOKIA_ROOT", "/opt/jolokia")

_XML = """<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" useJmx="{jmx}" brokerName="{name}"
          dataDirectory="{data}" schedulerSupport="true" persistent="true"
          populateJMSXUserID="true" useAuthenticatedPrincipalForJMSXUserID="true">
    <destinationPolicy><policyMap><policyEntries>
      <policyEntry queue=">" producerFlowControl="false"/>
      <policyEntry queue="*.DLQ" producerFlowControl="false" maxPageSize="20000"/>
      <policyEntry topic=">" producerFlowControl="false"/>
    </policyEntries></policyMap></destinationPolicy>
    <managementContext><managementContext createConnector="false"/></managementContext>
    <persistenceAdapter><kahaDB directory="{data}/kahadb"/></persistenceAdapter>
    <plugins>
      <simpleAuthenticationPlugin anonymousAccessAllowed="false">
        <users><authenticationUser username="{user}" password="{password}" groups="users,admins"/></users>
      </simpleAuthenticationPlugin>
    </plugins>
    <systemUsage><systemUsage>
      <memoryUsage><memoryUsage limit="64 mb"/></memoryUsage>
      <storeUsage><storeUsage limit="1 gb"/></storeUsage>
      <tempUsage><tempUsage limit="512 mb"/></tempUsage>
    </systemUsage></systemUsage>
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp://{host}:{port}?transport.closeAsync=false&amp;transport.tcpNoDelay=true"/>
    </transportConnectors>
  </broker>
</beans>
"""


def jolokia_agent() -> Optional[str]:
    """The Jolokia JVM agent jar under JOLOKIA_ROOT, or None."""
    found = sorted(glob.glob(os.path.join(JOLOKIA_ROOT, "jolokia-agent-jvm-*-javaagent.jar")))
    return found[-1] if found else None


def available() -> bool:
    """Whether Java and Debian's ActiveMQ jar are installed."""
    return shutil.which("java") is not None and os.path.exists(
        os.path.join(ACTIVEMQ_HOME, "bin", "activemq.jar"))


class LocalActiveMQ(BrokerProcess):
    """One broker process; ``start``/``kill``/``stop`` keep the data directory between runs.

    Its STOMP connector listens on ``host`` (default 127.0.0.1) only.  With ``jolokia_port`` the
    broker's JMX beans are served by the Jolokia JVM agent at ``http://host:jolokia_port/jolokia``
    (the same API as the web console's ``/api/jolokia``), for the broker's user.
    """

    kind = "activemq"
    title = "ActiveMQ"

    def __init__(self, workdir: str, port: Optional[int] = None, user: str = "icat",
                 password: str = "icat", name: str = "localhost", host: str = "127.0.0.1",
                 jolokia_port: Optional[int] = None) -> None:
        super().__init__(workdir, port, host)
        self.user = user
        self.password = password
        self.name = name
        self.jolokia_port = jolokia_port

    @property
    def management_url(self) -> str:
        """The Jolokia endpoint, when the broker has one."""
        if self.jolokia_port is None:
            return ""
        return "http://%s:%d/jolokia" % (self.host, self.jolokia_port)

    def _write_conf(self) -> str:
        conf = os.path.join(self.workdir, "conf")
        os.makedirs(conf, exist_ok=True)
        os.makedirs(os.path.join(self.workdir, "data"), exist_ok=True)
        path = os.path.join(conf, "activemq.xml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(_XML.format(name=self.name, jmx="true" if self.jolokia_port else "false",
                                     data=os.path.join(self.workdir, "data"),
                                     host=self.host, port=self.port, user=self.user, password=self.password))
        with open(os.path.join(conf, "log4j2.properties"), "w", encoding="utf-8") as handle:
            handle.write("rootLogger.level = WARN\nrootLogger.appenderRef.console.ref = console\n"
                         "appender.console.type = Console\nappender.console.name = console\n"
                         "appender.console.layout.type = PatternLayout\n"
                         "appender.console.layout.pattern = %d %-5p %c{1} - %m%n\n")
        return path

    def command(self) -> List[str]:
        xml = self._write_conf()
        conf = os.path.dirname(xml)
        agent = []
        if self.jolokia_port is not None:
            jar = jolokia_agent()
            if jar is None:
                raise RuntimeError("no Jolokia JVM agent under %s; run scripts/install-deps.sh" % JOLOKIA_ROOT)
            agent = ["-javaagent:%s=host=%s,port=%d,user=%s,password=%s,discoveryEnabled=false" % (
                jar, self.host, self.jolokia_port, self.user, self.password)]
        return [
            "java", "-Xmx256m", "-Xss512k", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", *agent,
            "-Dactivemq.home=%s" % ACTIVEMQ_HOME, "-Dactivemq.base=%s" % self.workdir,
            "-Dactivemq.conf=%s" % conf, "-Dactivemq.data=%s" % os.path.join(self.workdir, "data"),
            "-Dlog4j2.configurationFile=%s" % os.path.join(conf, "log4j2.properties"),
            "-jar", os.path.join(ACTIVEMQ_HOME, "bin", "activemq.jar"),
            "start", "xbean:file:%s?validate=false" % xml,
        ]


def main() -> None:
    """``python -m postprocessing.devtools.activemq DIR [PORT]``: run a broker in the foreground."""
    import sys

    LocalActiveMQ(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 61613).foreground()


if __name__ == "__main__":
    main()
