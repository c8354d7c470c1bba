"""``postprocessing start|stop|restart|status``: the agent as a classic daemon with a pidfile.

``start`` checks what it can on the terminal, then forks a process that becomes the
daemon with python-daemon (pidfile ``pid_file``, umask ``umask``, the log file
``log_file``) and runs the same service as ``postprocessing run``; like ``run``, it
refuses to run as root unless told to.  The daemon reports
back through a pipe once it holds the pidfile and its agent is built, so ``start``
can say whether it worked.  ``status`` follows the LSB init script exit codes.
"""

import argparse
import errno
import logging
import os
import select
import sys
import time
from typing import Any, List, Optional

from postprocessing.cli import logsetup
from postprocessing.cli.run import refuse_root, serve
from postprocessing.config import Config
from postprocessing.errors import ConfigError, PostProcessingError, UsageError
from postprocessing.jobs import identity
from postprocessing.ops import pidfile
from postprocessing.ops.pidfile import ABSENT, DEAD, RUNNING, gone, identity_path, probe
from postprocessing.safefiles import open_nofollow

logger = logging.getLogger(__name__)

#: LSB status codes.
STATUS_RUNNING = 0
STATUS_DEAD = 1
STATUS_NOT_RUNNING = 3
STATUS_UNKNOWN = 4



def add_parser(sub: Any) -> None:
    start = sub.add_parser(
        "start", help="start the agent as a background daemon",
        description="Start the agent as a daemon that writes its pid to pid_file and logs to log_file. "
                    "Refused when the daemon already runs.",
        epilog="exit status: 0 started; 1 already running or it failed to start; 2 bad configuration.")
    _start_arguments(start)
    start.set_defaults(handler=command, action="start")

    stop = sub.add_parser(
        "stop", help="stop the daemon gracefully",
        description="Send SIGTERM to the daemon and wait until it exits. It finishes its running jobs "
                    "first, so this can take as long as the job time limit.",
        epilog="exit status: 0 stopped or was not running; 1 still running when the wait ended, or it "
               "could not be signalled; 2 bad arguments or configuration.")
    _stop_arguments(stop)
    stop.add_argument("--pid", metavar="PID",
                      help="stop this process instead of the one in pid_file (systemd's ExecStop passes "
                           "$MAINPID; empty means there is nothing to stop)")
    stop.set_defaults(handler=command, action="stop", config_optional=_pid_given)

    restart = sub.add_parser("restart", help="stop the daemon if it runs, then start it",
                             description="Stop the daemon gracefully if it runs, then start it.",
                             epilog="exit status: as for stop, then as for start.")
    _stop_arguments(restart)
    _start_arguments(restart)
    restart.set_defaults(handler=command, action="restart")

    status = sub.add_parser(
        "status", help="report whether the daemon runs",
        description="Read pid_file and report whether the daemon is running, dead or not running.",
        epilog="exit status (LSB): 0 running; 1 dead but the pidfile exists; 3 not running; "
               "4 unknown (the pidfile cannot be read).")
    status.set_defaults(handler=command, action="status")


def _pid_given(args: argparse.Namespace) -> bool:
    """``stop --pid`` needs no configuration: systemd must be able to stop the agent even
    when someone broke the config file while it ran."""
    return args.pid is not None


def _start_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                   help="how long to wait for the daemon to come up (default 30)")
    p.add_argument("--allow-root", action="store_true", help="run even as root (config key allow_root)")


def _stop_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="how long to wait for the graceful exit (default: the job time limit plus "
                        "kill_grace_sec and shutdown_timeout_sec, plus a minute)")


# -- start ----------------------------------------------------------------------------
def _prepare(cfg: Config) -> None:
    """Check on the terminal what the daemon will need."""
    if not cfg.log_file:
        raise ConfigError("log_file", "the daemon needs a log file")
    for key, path in (("pid_file", cfg.pid_file), ("log_file", cfg.log_file)):
        directory = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as err:
            raise ConfigError(key, "cannot create %s: %s" % (directory, err.strerror)) from None
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ConfigError(key, "cannot write in %s" % directory)
    try:
        with open(cfg.log_file, "a", encoding="utf-8"):
            pass
    except OSError as err:
        raise ConfigError("log_file", "cannot write %s: %s" % (cfg.log_file, err.strerror)) from None


def start(cfg: Config, notes: List[str], wait: float, allow_root: bool) -> int:
    refuse_root(cfg, allow_root)
    state, pid = probe(cfg.pid_file)
    if state == RUNNING:
        raise PostProcessingError("already running (pid %d, pidfile %s); not starting another"
                                  % (pid or 0, cfg.pid_file))
    if state == DEAD:
        remove_stale(cfg.pid_file, pid)
    _prepare(cfg)
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        code = 1
        try:
            code = _daemon_main(cfg, notes, write_end)
        finally:
            os._exit(code)
    os.close(write_end)
    os.waitpid(child, 0)
    report = _read_report(read_end, wait)
    os.close(read_end)
    if report is None:
        raise PostProcessingError("the daemon did not come up within %g s; see %s" % (wait, cfg.log_file))
    if report.startswith("ok "):
        print("postprocessing: started (pid %s, pidfile %s, log %s)" % (report[3:], cfg.pid_file, cfg.log_file))
        return 0
    raise PostProcessingError("the daemon did not start: %s" % (report or "it exited; see %s" % cfg.log_file))


def _read_report(fd: int, wait: float) -> Optional[str]:
    """The daemon's one-line report; '' when it exited without one, None when it stayed silent."""
    deadline = time.monotonic() + wait
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace").split("\n", 1)[0].strip()


def _report(fd: int, text: str) -> None:
    try:
        os.write(fd, (text.replace("\n", " ") + "\n").encode("utf-8"))
    except OSError as err:
        if err.errno != errno.EPIPE:
            logger.warning("could not report to the starting command: %s", err)


def _daemon_main(cfg: Config, notes: List[str], report_fd: int) -> int:
    """Runs in the forked child: become the daemon, then serve until stopped."""
    import daemon
    import daemon.pidfile
    import lockfile

    logsetup.configure(cfg, to_stderr=False)
    streams = [h.stream for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    context = daemon.DaemonContext(
        working_directory="/", umask=int(cfg.umask, 8), detach_process=True,
        pidfile=daemon.pidfile.TimeoutPIDLockFile(cfg.pid_file, acquire_timeout=0),
        files_preserve=streams + [report_fd], signal_map={})
    try:
        context.open()
    except lockfile.AlreadyLocked:
        _report(report_fd, "already running (pidfile %s is taken)" % cfg.pid_file)
        return 1
    except (lockfile.Error, OSError) as err:
        logger.error("cannot become a daemon: %s", err)
        _report(report_fd, "cannot become a daemon: %s" % err)
        return 1
    try:
        logger.info("daemon running as pid %d, pidfile %s", os.getpid(), cfg.pid_file)
        with open_nofollow(identity_path(cfg.pid_file), "w", encoding="ascii") as handle:
            handle.write(identity.identity(os.getpid()) + "\n")
        return serve(cfg, notes, ready=lambda: _report(report_fd, "ok %d" % os.getpid()))
    except PostProcessingError as err:
        logger.error("%s", err)
        _report(report_fd, str(err))
        return 1
    except Exception as err:  # the daemon has no terminal: the log is the only place to say why
        logger.exception("the agent failed")
        _report(report_fd, "internal error: %s; see %s" % (err, cfg.log_file))
        return 1
    finally:
        try:
            os.unlink(identity_path(cfg.pid_file))
        except OSError:
            pass
        context.close()


def remove_stale(path: str, pid: Optional[int]) -> None:
    if pidfile.remove_stale(path):
        print("postprocessing: removed stale pidfile %s (pid %s is gone)" % (path, pid or "-"), file=sys.stderr)


# -- stop -----------------------------------------------------------------------------
def stop_timeout(cfg: Config, given: Optional[float]) -> float:
    if given is not None:
        if given <= 0:
            raise UsageError("--timeout must be greater than 0")
        return given
    return cfg.task_time_limit_minutes * 60.0 + cfg.kill_grace_sec + cfg.shutdown_timeout_sec + 60.0


def terminate(pid: int, timeout: float) -> None:
    """SIGTERM ``pid`` and wait for it to exit; raises PostProcessingError if it does not."""
    if pidfile.send_term(pid):
        print("postprocessing: sent SIGTERM to pid %d; waiting for running jobs to finish" % pid, file=sys.stderr)
        pidfile.wait_gone(pid, timeout)


def stop(cfg: Config, pid_arg: Optional[str], timeout: float) -> int:
    if pid_arg is not None:
        if not pid_arg.strip():
            print("postprocessing: not running")
            return 0
        if not pid_arg.strip().isdigit():
            raise UsageError("--pid: %r is not a process id" % pid_arg)
        pid = int(pid_arg)
        if gone(pid):
            print("postprocessing: not running (pid %d is gone)" % pid)
            return 0
        terminate(pid, timeout)
        print("postprocessing: stopped (pid %d)" % pid)
        return 0
    state, found = probe(cfg.pid_file)
    if state == ABSENT:
        print("postprocessing: not running (no pidfile %s)" % cfg.pid_file)
        return 0
    if state == DEAD or found is None:
        remove_stale(cfg.pid_file, found)
        print("postprocessing: not running")
        return 0
    terminate(found, timeout)
    print("postprocessing: stopped (pid %d)" % found)
    return 0


# -- status ---------------------------------------------------------------------------
def status(cfg: Config) -> int:
    try:
        state, pid = probe(cfg.pid_file)
    except PostProcessingError as err:
        print("postprocessing status unknown: %s" % err)
        return STATUS_UNKNOWN
    if state == RUNNING:
        print("postprocessing is running (pid %d)" % (pid or 0))
        return STATUS_RUNNING
    if state == DEAD:
        print("postprocessing is dead but pidfile %s exists (pid %s)" % (cfg.pid_file, pid or "unreadable"))
        return STATUS_DEAD
    print("postprocessing is not running")
    return STATUS_NOT_RUNNING


def command(args: argparse.Namespace, cfg: Config, notes: List[str]) -> int:
    if args.action == "status":
        return status(cfg)
    if args.action in ("start", "restart") and args.wait <= 0:
        raise UsageError("--wait must be greater than 0")
    if args.action == "start":
        return start(cfg, notes, args.wait, args.allow_root)
    timeout = stop_timeout(cfg, args.timeout)
    if args.action == "stop":
        return stop(cfg, args.pid, timeout)
    refuse_root(cfg, args.allow_root)
    stop(cfg, None, timeout)
    return start(cfg, notes, args.wait, args.allow_root)
