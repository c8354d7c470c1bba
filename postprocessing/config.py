"""Typed, frozen configuration read from the SNS agent's JSON config file.

An existing ``post_processing.conf`` loads unchanged: keys the new design no longer
needs are accepted and reported as ignored, legacy processor names map to ours, and
queue names may carry the ``/queue/`` prefix or not.  Every key is documented in
``configuration/README.md``.
"""

import dataclasses
import json
import logging
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

from postprocessing.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_PATH = "/etc/autoreduce/post_processing.conf"
ENV_VAR = "POSTPROCESSING_CONFIG"

#: Keys of the SNS agent that the new design does not use (``failover_uri`` gives the
#: brokers when ``brokers`` is absent).
LEGACY_IGNORED = (
    "sw_dir",
    "python_dir",
    "start_script",
    "task_script",
    "task_script_queue_arg",
    "task_script_data_arg",
)

#: Legacy processor class names and the processor each maps to.
LEGACY_PROCESSORS = {
    "reduction_processor.ReductionProcessor": "reduction",
    "reduction_processor.ReductionProcessorHighMemory": "reduction_himem",
    "oncat_processor.ONCatProcessor": "oncat",
    "oncat_reduced_processor.ONCatProcessor": "oncat_reduced",
    "create_reduction_script_processor.CreateReductionScriptProcessor": "create_script",
    "calvera_processor.CalveraProcessor": "calvera",
    "calvera_processor.CalveraReducedProcessor": "calvera_reduced",
    "intersect_processor.IntersectProcessor": "intersect",
    "intersect_processor.IntersectReducedProcessor": "intersect_reduced",
    "test_processor.TestProcessor": "test",
}
ALL_PROCESSORS = ("reduction", "reduction_himem", "oncat", "oncat_reduced", "create_script",
                  "calvera", "calvera_reduced", "intersect", "intersect_reduced", "test")
#: What runs when the config has no ``processors``: the SNS agent's default list.
DEFAULT_PROCESSORS = ("oncat", "oncat_reduced", "create_script", "reduction")
#: Processors that need a URL, and the config key giving it.
_URL_KEYS = {"calvera": "calvera_ingest_url", "calvera_reduced": "calvera_ingest_url",
             "intersect": "intersect_ingest_url", "intersect_reduced": "intersect_ingest_url"}

_FACILITY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SECRET_KEYS = frozenset({"amq_pwd", "oncat_api_token", "management_pwd"})


def queue_destination(name: str) -> str:
    """Return a STOMP destination for a queue name given with or without ``/queue/``."""
    if name.startswith("/"):
        return name
    return "/queue/" + name


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of the agent, with the SNS agent's defaults."""

    # broker
    brokers: Tuple[Tuple[str, int], ...] = (("localhost", 61613),)
    amq_user: str = ""
    amq_pwd: str = dataclasses.field(default="", repr=False)
    broker_type: str = "auto"
    stomp_vhost: str = ""
    allow_root: bool = False
    umask: str = "022"
    stomp_heartbeat_ms: int = 10000
    connect_timeout_sec: float = 5.0
    reconnect_initial_sec: float = 0.5
    reconnect_max_sec: float = 10.0
    failback_interval_sec: float = 30.0
    max_body_bytes: int = 1048576
    # logging
    log_file: str = "/opt/postprocessing/log/postprocessing.log"
    log_level: str = "INFO"
    log_max_bytes: int = 10485760
    log_backup_count: int = 5
    # destinations
    postprocess_error: str = "POSTPROCESS.ERROR"
    reduction_data_ready: str = "REDUCTION.DATA_READY"
    reduction_himem_data_ready: str = "REDUCTION.HIMEM.DATA_READY"
    reduction_started: str = "REDUCTION.STARTED"
    reduction_complete: str = "REDUCTION.COMPLETE"
    reduction_error: str = "REDUCTION.ERROR"
    reduction_disabled: str = "REDUCTION.DISABLED"
    heart_beat: str = "/topic/SNS.COMMON.STATUS.AUTOREDUCE.0"
    heartbeat_ping: str = "/topic/SNS.COMMON.STATUS.PING"
    heartbeat_interval_sec: float = 30.0
    catalog_data_ready: str = "CATALOG.ONCAT.DATA_READY"
    catalog_started: str = "CATALOG.ONCAT.STARTED"
    catalog_complete: str = "CATALOG.ONCAT.COMPLETE"
    catalog_error: str = "CATALOG.ONCAT.ERROR"
    reduction_catalog_data_ready: str = "REDUCTION_CATALOG.DATA_READY"
    reduction_catalog_started: str = "REDUCTION_CATALOG.STARTED"
    reduction_catalog_complete: str = "REDUCTION_CATALOG.COMPLETE"
    reduction_catalog_error: str = "REDUCTION_CATALOG.ERROR"
    create_reduction_script: str = "REDUCTION.CREATE_SCRIPT"
    service_status: str = "/topic/SNS.${instrument}.STATUS.POSTPROCESS"
    # cataloguing
    oncat_url: str = "https://oncat.ornl.gov"
    oncat_api_token: str = dataclasses.field(default="", repr=False)
    oncat_timeout_sec: float = 60.0
    image_filepath_metadata_paths: Tuple[str, ...] = ("metadata.entry.daslogs.bl10:exp:im:imagefilepath.value",)
    # HTTP cataloguers (Calvera, INTERSECT)
    calvera_ingest_url: str = ""
    intersect_ingest_url: str = ""
    ingest_timeout_sec: float = 3.0
    calvera_raw_data_ready: str = "CALVERA.RAW.DATA_READY"
    calvera_raw_complete: str = "CALVERA.RAW.COMPLETE"
    calvera_raw_error: str = "CALVERA.RAW.ERROR"
    calvera_reduced_data_ready: str = "CALVERA.REDUCED.DATA_READY"
    calvera_reduced_complete: str = "CALVERA.REDUCED.COMPLETE"
    calvera_reduced_error: str = "CALVERA.REDUCED.ERROR"
    intersect_raw_data_ready: str = "INTERSECT.RAW.DATA_READY"
    intersect_raw_complete: str = "INTERSECT.RAW.COMPLETE"
    intersect_raw_error: str = "INTERSECT.RAW.ERROR"
    intersect_reduced_data_ready: str = "INTERSECT.REDUCED.DATA_READY"
    intersect_reduced_complete: str = "INTERSECT.REDUCED.COMPLETE"
    intersect_reduced_error: str = "INTERSECT.REDUCED.ERROR"
    test_data_ready: str = "REDUCTION.TESTPROCESSOR.DATA_READY"
    # reduction scripts
    script_backup_count: int = 5
    #: Broker users (as the broker validates them) whose CREATE_SCRIPT requests are obeyed.
    create_script_users: Tuple[str, ...] = ()
    # facility layout
    data_root: str = "/"
    facility: str = "SNS"
    dev_output_dir: str = ""
    dev_instrument_shared: str = ""
    # jobs
    processors: Tuple[str, ...] = DEFAULT_PROCESSORS
    communication_only: bool = False
    max_procs: int = 5
    jobs_per_instrument: int = 2
    exceptions: Tuple[str, ...] = ("Error in logging framework",)
    python_exec: str = "python3"
    conda_wrapper: Tuple[str, ...] = ("nsd-conda-wrap.sh", "{env}", "--classic")
    system_mem_limit_perc: float = 70.0
    mem_check_interval_sec: float = 0.2
    task_time_limit_minutes: float = 60.0
    kill_grace_sec: float = 10.0
    job_nice: int = 10
    job_env_passthrough: Tuple[str, ...] = (
        "PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "TMPDIR", "PYTHONPATH",
    )
    # admission control (0 switches a threshold off)
    admission_max_load_per_cpu: float = 4.0
    admission_min_free_mem_perc: float = 5.0
    admission_check_interval_sec: float = 1.0
    shutdown_timeout_sec: float = 30.0
    # ISIS-style features (all off by default)
    reduction_not_needed: str = "REDUCTION.NOT_NEEDED"
    data_retry_delay_sec: float = 0.0
    data_retry_max: int = 0
    reduction_cancel: str = "REDUCTION.CANCEL"
    cancel_fanout: str = "/topic/POSTPROCESSING.CANCEL"
    cancel_window_sec: float = 600.0
    serialize_per_proposal: bool = False
    max_wait_hold_sec: float = 60.0
    stage_output: bool = False
    # operations: classic daemon, dead letters, metrics
    pid_file: str = "/opt/postprocessing/postprocessing.pid"
    #: "" means the broker's own: ActiveMQ.DLQ on ActiveMQ Classic, DLQ on Artemis.
    dead_letter_queue: str = ""
    metrics_port: int = 0
    metrics_address: str = "0.0.0.0"
    # queue depth from the broker's management interface ("" = not read; docs/operations.md)
    management_url: str = ""
    management_user: str = ""
    management_pwd: str = dataclasses.field(default="", repr=False)
    management_broker_name: str = ""
    management_timeout_sec: float = 5.0
    management_poll_sec: float = 30.0
    # delivery: the run journal and the claims on the shared filesystem (docs/delivery.md)
    journal_path: str = "/var/lib/postprocessing/journal.sqlite3"
    journal_keep_sec: float = 604800.0
    lease_stale_sec: float = 60.0
    lease_refresh_sec: float = 10.0
    # fleet: status messages and control commands (docs/operations.md)
    fleet_status: str = "/topic/POSTPROCESSING.FLEET.STATUS"
    fleet_control: str = "/topic/POSTPROCESSING.FLEET.CONTROL"
    #: Broker users (as the broker validates them) whose fleet control commands are obeyed.
    control_users: Tuple[str, ...] = ()

    # -- derived values --------------------------------------------------------
    def destination(self, name: str) -> str:
        """The STOMP destination of the queue named by config key ``name``."""
        return queue_destination(getattr(self, name))

    @property
    def exception_patterns(self) -> Tuple["re.Pattern[str]", ...]:
        return tuple(re.compile(p) for p in self.exceptions)

    def safe_items(self) -> Dict[str, Any]:
        """The settings with secrets masked, for logging."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = "****" if f.name in _SECRET_KEYS and value else value
        return out


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _type_name(value: Any) -> str:
    return type(value).__name__


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the type of ``default`` and convert it."""
    if isinstance(default, bool):
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return bool(value)
        raise ConfigError(key, "expected true/false or 0/1, got %s %r" % (_type_name(value), value))
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, "expected an integer, got %s" % _type_name(value))
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(key, "expected a number, got %s" % _type_name(value))
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise ConfigError(key, "expected a string, got %s" % _type_name(value))
    if key == "brokers":
        return _coerce_brokers(value)
    if isinstance(default, tuple):
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(key, "expected a list of strings")
    raise ConfigError(key, "unsupported setting")


def _coerce_brokers(value: Any) -> Tuple[Tuple[str, int], ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError("brokers", "expected a non-empty list of [host, port] pairs")
    out = []
    for item in value:
        ok = (
            isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)
            and isinstance(item[1], int) and not isinstance(item[1], bool) and 0 < item[1] < 65536
        )
        if not ok:
            raise ConfigError("brokers", "expected [host, port] pairs, got %r" % (item,))
        out.append((item[0], item[1]))
    return tuple(out)


_FAILOVER_BROKER = re.compile(r"(?:tcp|stomp)://([^:/,()?\s]+):([0-9]{1,5})")


def brokers_from_failover(uri: str) -> Tuple[Tuple[str, int], ...]:
    """``failover:(tcp://a:61613,tcp://b:61613)?...`` -> ``(("a", 61613), ("b", 61613))``."""
    found = tuple((host, int(port)) for host, port in _FAILOVER_BROKER.findall(uri))
    if not found or not all(0 < port < 65536 for _, port in found):
        raise ConfigError("failover_uri", "no tcp://host:port broker in %r" % uri)
    return found


def _map_processors(names: Tuple[str, ...]) -> Tuple[str, ...]:
    out: List[str] = []
    for name in names:
        mapped = LEGACY_PROCESSORS.get(name, name)
        if mapped not in ALL_PROCESSORS:
            raise ConfigError("processors", "unknown processor %r" % name)
        if mapped not in out:
            out.append(mapped)
    return tuple(out)


def _validate(cfg: Config) -> None:
    positive = ("max_procs", "heartbeat_interval_sec", "mem_check_interval_sec",
                "task_time_limit_minutes", "max_body_bytes", "connect_timeout_sec",
                "reconnect_initial_sec", "reconnect_max_sec", "admission_check_interval_sec",
                "oncat_timeout_sec", "ingest_timeout_sec", "max_wait_hold_sec",
                "management_timeout_sec", "management_poll_sec")
    for key in positive:
        if getattr(cfg, key) <= 0:
            raise ConfigError(key, "must be greater than 0")
    for key in ("failback_interval_sec", "data_retry_delay_sec", "data_retry_max", "cancel_window_sec",
                "log_max_bytes", "log_backup_count", "jobs_per_instrument", "kill_grace_sec", "stomp_heartbeat_ms",
                "admission_max_load_per_cpu", "admission_min_free_mem_perc", "shutdown_timeout_sec",
                "script_backup_count", "journal_keep_sec"):
        if getattr(cfg, key) < 0:
            raise ConfigError(key, "must not be negative")
    if not 0 < cfg.system_mem_limit_perc <= 100:
        raise ConfigError("system_mem_limit_perc", "must be a percentage in (0, 100]")
    if not -20 <= cfg.job_nice <= 19:
        raise ConfigError("job_nice", "must be between -20 and 19")
    own_nice = os.nice(0)
    if cfg.job_nice < own_nice:
        raise ConfigError("job_nice", "%d is below the agent's own niceness %d: a job cannot be given "
                                      "a higher priority than the agent" % (cfg.job_nice, own_nice))
    if not _FACILITY.fullmatch(cfg.facility):
        raise ConfigError("facility", "%r is not a plain name such as \"SNS\" (letters, digits, '.', '_', '-')"
                          % cfg.facility)
    for name in cfg.processors:
        url_key = _URL_KEYS.get(name)
        if url_key and not getattr(cfg, url_key):
            raise ConfigError(url_key, "must be set: processor %r is listed" % name)
    if cfg.broker_type not in ("auto", "activemq", "artemis", "rabbitmq"):
        raise ConfigError("broker_type", "must be 'auto', 'activemq', 'artemis' or 'rabbitmq'")
    if logging.getLevelName(cfg.log_level.upper()) not in (10, 20, 30, 40, 50):
        raise ConfigError("log_level", "unknown level %r" % cfg.log_level)
    if not os.path.isabs(cfg.data_root):
        raise ConfigError("data_root", "must be an absolute path")
    if not cfg.python_exec:
        raise ConfigError("python_exec", "must not be empty")
    if "{env}" not in cfg.conda_wrapper:
        raise ConfigError("conda_wrapper", "must contain the placeholder '{env}'")
    if not re.fullmatch(r"0?[0-7]{3}", cfg.umask):
        raise ConfigError("umask", "expected an octal umask such as \"027\"")
    if not 0 <= cfg.metrics_port < 65536:
        raise ConfigError("metrics_port", "must be a TCP port, or 0 for no metrics endpoint")
    if cfg.management_url and not re.match(r"https?://[^/\s]+", cfg.management_url):
        raise ConfigError("management_url", "expected an http:// or https:// URL, got %r" % cfg.management_url)
    if cfg.management_pwd and not cfg.management_user:
        raise ConfigError("management_pwd", "is set without management_user")
    if not os.path.isabs(cfg.journal_path):
        raise ConfigError("journal_path", "must be an absolute path")
    if not 0 < cfg.lease_refresh_sec < cfg.lease_stale_sec:
        raise ConfigError("lease_refresh_sec", "must be greater than 0 and less than lease_stale_sec")
    if not cfg.pid_file or not os.path.isabs(cfg.pid_file):
        raise ConfigError("pid_file", "must be an absolute path")
    for key in ("fleet_status", "fleet_control"):
        if not getattr(cfg, key).startswith("/topic/"):
            raise ConfigError(key, "must be a topic (/topic/NAME): every agent and operator hears it")
    for pattern in cfg.exceptions:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ConfigError("exceptions", "bad regular expression %r: %s" % (pattern, err)) from None


def from_mapping(data: Mapping[str, Any]) -> Tuple[Config, List[str]]:
    """Build a Config from parsed JSON; returns it with the notes to log (ignored keys)."""
    if not isinstance(data, Mapping):
        raise ConfigError(None, "the file must hold a JSON object")
    values: Dict[str, Any] = {}
    notes: List[str] = []
    for key, value in data.items():
        if key == "failover_uri":
            if "brokers" in data:
                notes.append("configuration key 'failover_uri' is not needed beside 'brokers' and is ignored")
            elif isinstance(value, str):
                values["brokers"] = brokers_from_failover(value)
                notes.append("brokers %s taken from 'failover_uri'" % (values["brokers"],))
            else:
                raise ConfigError("failover_uri", "expected a string, got %s" % _type_name(value))
            continue
        if key in LEGACY_IGNORED:
            notes.append("configuration key '%s' is not needed any more and is ignored" % key)
            continue
        field = _FIELDS.get(key)
        if field is None:
            notes.append("configuration key '%s' is unknown and is ignored" % key)
            continue
        values[key] = _coerce(key, value, field.default)
    if "processors" in values:
        values["processors"] = _map_processors(values["processors"])
    cfg = Config(**values)
    _validate(cfg)
    return cfg, notes


def config_path(explicit: Optional[str], environ: Mapping[str, str]) -> str:
    """The config file to read: ``--config``, then ``$POSTPROCESSING_CONFIG``, then the default."""
    return explicit or environ.get(ENV_VAR) or DEFAULT_PATH


def load(path: str) -> Tuple[Config, List[str]]:
    """Read and validate a config file; raises ConfigError naming the problem."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as err:
        raise ConfigError(None, "cannot read %s: %s" % (path, err.strerror)) from None
    except UnicodeDecodeError:
        raise ConfigError(None, "%s is not UTF-8 text" % path) from None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ConfigError(None, "%s is not valid JSON: %s" % (path, err)) from None
    return from_mapping(data)
