"""Entry point: ``postprocessing [--config FILE] COMMAND``."""

import argparse
import os
import sys
from typing import List, Optional, Tuple

from postprocessing import __version__
from postprocessing import config as config_mod
from postprocessing.cli import control, daemonctl, dlq, fleet, logs, ping, requeue, run
from postprocessing.errors import ConfigError, PostProcessingError, UsageError

EXIT_CONFIG = 2
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


CONFIG_HELP = "config file (default: $%s or %s)" % (config_mod.ENV_VAR, config_mod.DEFAULT_PATH)


def _config_everywhere(p: argparse.ArgumentParser) -> None:
    """Accept ``--config`` after any subcommand too (``postprocessing status --config FILE``).

    Where it is not given, it leaves the value given before the subcommand alone."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=CONFIG_HELP)
                _config_everywhere(child)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="postprocessing", description="The autoreduction agent.")
    p.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    p.add_argument("--version", action="version", version="%(prog)s " + __version__)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    run.add_parser(sub)
    daemonctl.add_parser(sub)
    requeue.add_parser(sub)
    ping.add_parser(sub)
    dlq.add_parser(sub)
    fleet.add_parser(sub)
    control.add_parser(sub)
    logs.add_parser(sub)
    _config_everywhere(p)
    return p


def load_config(args: argparse.Namespace, path: str) -> Tuple[config_mod.Config, List[str]]:
    """The configuration; a command that can do without one (its ``config_optional(args)``
    is true, as for ``stop --pid``) goes on with the defaults when the file is broken."""
    try:
        return config_mod.load(path)
    except ConfigError as err:
        optional = getattr(args, "config_optional", None)
        if optional is None or not optional(args):
            raise
        print("postprocessing: %s; going on with the defaults" % err, file=sys.stderr)
        return config_mod.Config(), []


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    path = config_mod.config_path(args.config, os.environ)
    try:
        cfg, notes = load_config(args, path)
        return int(args.handler(args, cfg, notes))
    except ConfigError as err:
        print("postprocessing: %s" % err, file=sys.stderr)
        return EXIT_CONFIG
    except UsageError as err:
        print("postprocessing %s: %s" % (args.command, err), file=sys.stderr)
        return EXIT_USAGE
    except PostProcessingError as err:
        print("postprocessing: %s" % err, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("postprocessing: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
