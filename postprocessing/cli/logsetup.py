"""Logging handlers for the service: a size-rotated file, and stderr for journald."""

import logging
import logging.handlers
import os
import sys

from postprocessing.config import Config
from postprocessing.errors import ConfigError

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def under_systemd() -> bool:
    return bool(os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"))


def configure(cfg: Config, to_stderr: bool) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(cfg.log_level.upper())
    formatter = logging.Formatter(FORMAT)
    if cfg.log_file:
        if os.path.islink(cfg.log_file):
            raise ConfigError("log_file", "%s is a symbolic link; refusing to write through it" % cfg.log_file)
        directory = os.path.dirname(os.path.abspath(cfg.log_file))
        if not os.path.isdir(directory):
            try:
                os.makedirs(directory)
            except OSError as err:
                raise ConfigError("log_file", "the log directory %s is missing and cannot be created (%s); "
                                              "create it, writable by the service user"
                                  % (directory, err.strerror)) from None
        try:
            rotating = logging.handlers.RotatingFileHandler(
                cfg.log_file, maxBytes=cfg.log_max_bytes, backupCount=cfg.log_backup_count,
                encoding="utf-8", errors="backslashreplace")
        except OSError as err:
            raise ConfigError("log_file", "cannot write %s: %s" % (cfg.log_file, err.strerror)) from None
        rotating.setFormatter(formatter)
        root.addHandler(rotating)
    if to_stderr or under_systemd() or not cfg.log_file:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s")
                            if under_systemd() else formatter)
        root.addHandler(stream)
    # stomp.py logs whole frames at DEBUG; keep message bodies out of our logs
    logging.getLogger("stomp").setLevel(max(logging.INFO, root.level))
