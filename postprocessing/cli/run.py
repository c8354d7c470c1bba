"""``postprocessing run``: the agent in the foreground (what systemd starts)."""

import argparse
import logging
import os
import signal
import socket
from typing import Any, Callable, Optional

from postprocessing import processors
from postprocessing.agent.agent import Agent
from postprocessing.agent.observer import Observer
from postprocessing.cli import logsetup
from postprocessing.config import Config
from postprocessing.errors import ConfigError
from postprocessing.jobs import scriptlib
from postprocessing.jobs.environment import agent_identity, job_environment
from postprocessing.jobs.reaper import reap_orphans
from postprocessing.transport.stomp import StompTransport

logger = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="run the agent in the foreground",
                       description="Run the agent in the foreground until SIGTERM or SIGINT.")
    p.add_argument("--stderr", action="store_true", help="also log to stderr")
    p.add_argument("--allow-root", action="store_true", help="run even as root (config key allow_root)")
    p.set_defaults(handler=command)


def refuse_root(cfg: Config, allow_root: bool) -> None:
    """Jobs run as the agent's user: running them as root needs an explicit yes."""
    if os.geteuid() == 0 and not (allow_root or cfg.allow_root):
        raise ConfigError("allow_root", "refusing to run as root: run as the service user, "
                                        "or pass --allow-root (or set allow_root) to insist")


def build_agent(cfg: Config, helper_dir: Optional[str] = None) -> Agent:
    hostname = socket.gethostname()

    def transport(sink: Any) -> StompTransport:
        return StompTransport(cfg.brokers, cfg.amq_user, cfg.amq_pwd, sink,
                              heartbeat_ms=cfg.stomp_heartbeat_ms,
                              connect_timeout=cfg.connect_timeout_sec, broker_type=cfg.broker_type,
                              vhost=cfg.stomp_vhost)

    env = job_environment(cfg.job_env_passthrough, agent_identity(os.getpid()), helper_dir)
    return Agent(cfg, processors.build(cfg, hostname), hostname, transport, env, observer=metrics_observer(cfg))


def metrics_observer(cfg: Config) -> Optional[Observer]:
    """The Prometheus endpoint's observer, serving already, when ``metrics_port`` is set."""
    if not cfg.metrics_port:
        return None
    try:
        from postprocessing.agent.metrics import MetricsObserver
    except ImportError:
        raise ConfigError("metrics_port", "needs prometheus-client: pip install 'postprocessing[metrics]'") from None
    observer = MetricsObserver(cfg)
    observer.serve()
    return observer


def serve(cfg: Config, notes: "list[str]", ready: Optional[Callable[[], None]] = None) -> int:
    """Run the agent in this process until it is told to stop; ``ready()`` once it is built."""
    for note in notes:
        logger.info("%s", note)
    logger.info("configuration: %s", cfg.safe_items())
    reap_orphans()
    with scriptlib.installed() as helper_dir:
        agent = build_agent(cfg, helper_dir)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: agent.request_stop(signal.Signals(signum).name))
        if ready is not None:
            ready()
        return agent.run()


def command(args: argparse.Namespace, cfg: Config, notes: "list[str]") -> int:
    refuse_root(cfg, args.allow_root)
    os.umask(int(cfg.umask, 8))
    logsetup.configure(cfg, to_stderr=args.stderr)
    return serve(cfg, notes)
