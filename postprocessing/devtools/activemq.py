"""A private ActiveMQ Classic broker for tests, the demo and the benchmark.

It runs Debian's ``activemq`` jar directly (the packaged wrapper forces a 512 MB heap,
logs to /dev/null and switches user), with its own data directory, a STOMP connector
on a free port, the scheduler on (for delayed re-sends), persistence in KahaDB (so a
restart keeps messages) and one authenticated user.
"""

import os
import shutil
from typing import List, Optional

from postprocessing.devtools.brokerproc import BrokerProcess

ACTIVEMQ_HOME = "/usr/share/activemq"

_XML = """<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" useJmx="false" brokerName="{name}"
          dataDirectory="{data}" schedulerSupport="true" persistent="true"
          populateJMSXUserID="true" useAuthenticatedPrincipalForJMSXUserID="true">
    <destinationPolicy><policyMap><policyEntries>
      <policyEntry queue=">" producerFlowControl="false"/>
      <policyEntry queue="*.DLQ" producerFlowControl="false" maxPageSize="20000"/>
      <policyEntry topic=">" producerFlowControl="false"/>
    </policyEntries></policyMap></destinationPolicy>
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


def available() -> bool:
    """Whether Java and Debian's ActiveMQ jar are installed."""
    return shutil.which("java") is not None and os.path.exists(
        os.path.join(ACTIVEMQ_HOME, "bin", "activemq.jar"))


class LocalActiveMQ(BrokerProcess):
    """One broker process; ``start``/``kill``/``stop`` keep the data directory between runs.

    Its STOMP connector listens on ``host`` (default 127.0.0.1) only.
    """

    kind = "activemq"
    title = "ActiveMQ"

    def __init__(self, workdir: str, port: Optional[int] = None, user: str = "icat",
                 password: str = "icat", name: str = "localhost", host: str = "127.0.0.1") -> None:
        super().__init__(workdir, port, host)
        self.user = user
        self.password = password
        self.name = name

    def _write_conf(self) -> str:
        conf = os.path.join(self.workdir, "conf")
        os.makedirs(conf, exist_ok=True)
        os.makedirs(os.path.join(self.workdir, "data"), exist_ok=True)
        path = os.path.join(conf, "activemq.xml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(_XML.format(name=self.name, data=os.path.join(self.workdir, "data"),
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
        return [
            "java", "-Xmx256m", "-Xss512k", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
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
