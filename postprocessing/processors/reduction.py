"""Reduction: run the instrument's ``reduce_<INST>.py`` on a run's data file.

Answers ``reduction_started``, then ``reduction_complete``, ``reduction_error``,
``reduction_disabled`` or ``reduction_not_needed``; unusable input goes to
``postprocess_error`` without STARTED.  A data file that is not there yet can be
re-sent to the input queue with a broker-scheduled delay (``data_retry_*``).
"""

import os
import re
import time
from typing import Any, Dict, List, Optional

from postprocessing import layout, safefiles
from postprocessing.errors import Cancelled
from postprocessing.jobs.process import ProcessResult
from postprocessing.messages import RunRequest, outcome, parse_run
from postprocessing.processors import launcher
from postprocessing.processors.base import JobContext, Outcome, Processor, Work
from postprocessing.processors.scriptinfo import ScriptInfo, inspect_script
from postprocessing.processors.staging import Staging, copy_results, produced_since
from postprocessing.script import SKIP_EXIT_CODE, SKIP_PREFIX

_ERROR_LINE = re.compile(r"Error: (.+)$", re.MULTILINE)
_ERR_TAIL_BYTES = 65536
_MAX_RETRY_IN_SEC = 86400.0


def error_line(err_text: str, result: ProcessResult) -> str:
    """The line that explains a failed run: last ``Error: ...``, last line, or exit status."""
    matches = _ERROR_LINE.findall(err_text)
    if matches:
        return str(matches[-1]).strip()
    lines = [line.strip() for line in err_text.splitlines() if line.strip()]
    return lines[-1] if lines else result.describe


def read_tail(path: str) -> str:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - _ERR_TAIL_BYTES))
        return handle.read().decode("utf-8", errors="replace")


def conda_env(script: str) -> Optional[str]:
    """The conda environment a script names with ``CONDA_ENV='name'``, if any."""
    return inspect_script(script).conda_env


def skip_reason(err_text: str) -> str:
    """Why the script skipped: its ``SkipRun`` reason, else its last stderr line."""
    tagged = [line[len(SKIP_PREFIX):].strip() for line in err_text.splitlines() if line.startswith(SKIP_PREFIX)]
    lines = tagged or [line.strip() for line in err_text.splitlines() if line.strip()]
    return lines[-1] if lines else "the reduce script exited with status %d (skip)" % SKIP_EXIT_CODE


def _attempt(fields: Dict[str, Any]) -> int:
    value = fields.get("attempt", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 1


class ReductionProcessor(Processor):
    name = "reduction"
    queue_key = "reduction_data_ready"
    cancellable = True
    in_process = False

    def accept(self, data: Dict[str, Any]) -> Work:
        request = parse_run(data, self.config.facility)
        launcher.reduction_arguments(data)
        return Work(data, request.label, request.instrument, request,
                    proposal="%s/%s" % (request.instrument, request.ipts))

    def failed(self, ctx: JobContext, error: str) -> Outcome:
        return ctx.reply(self.config.destination("reduction_error"), "REDUCTION: %s" % error)

    def cancelled(self, work: Work, who: str) -> Outcome:
        return Outcome(self.config.destination("reduction_error"), outcome(
            work.fields, self.hostname, "REDUCTION: cancelled", cancelled_by=who))

    def run(self, ctx: JobContext) -> Outcome:
        cfg = self.config
        req: RunRequest = ctx.work.payload
        problem = layout.check_readable(cfg, req.data_file)
        if problem is not None:
            return self.data_not_ready(ctx, req, problem)
        ctx.publish(cfg.destination("reduction_started"), outcome(req.fields, self.hostname))
        if cfg.communication_only:
            return ctx.reply(cfg.destination("reduction_complete"))

        inst_dir = layout.instrument_shared(cfg, req.facility, req.instrument)
        out_dir = layout.output_dir(cfg, req.facility, req.instrument, req.ipts)
        log_dir = os.path.join(out_dir, "reduction_log")
        try:
            safefiles.make_dirs(log_dir, cfg.data_root)
        except safefiles.UnsafePath as err:
            ctx.log.error("%s", err)
            return self.failed(ctx, str(err))
        except OSError as err:
            return self.failed(ctx, "cannot create %s: %s" % (log_dir, err.strerror))
        base = os.path.basename(req.data_file)
        self.run_summary(ctx, req, inst_dir, out_dir, log_dir, base)

        script = os.path.join(inst_dir, "reduce_%s.py" % req.instrument)
        if not os.path.isfile(script):
            ctx.log.info("no %s: reduction disabled", script)
            return ctx.reply(cfg.destination("reduction_disabled"))
        info = inspect_script(script)
        if int(req.run_number) in info.skip_runs:
            reason = "run %s is listed in SKIP_RUNS of %s" % (req.run_number, os.path.basename(script))
            ctx.log.info("skipped: %s", reason)
            return Outcome(cfg.destination("reduction_not_needed"), outcome(req.fields, reason))
        return self.reduce(ctx, req, script, info, inst_dir, out_dir, log_dir, base)

    def data_not_ready(self, ctx: JobContext, req: RunRequest, problem: str) -> Outcome:
        """Re-send the run for later while retries remain; otherwise report the problem."""
        cfg = self.config
        attempt = _attempt(dict(req.fields))
        retryable = cfg.data_retry_max and not problem.startswith(("Data file is outside", "Data file is behind"))
        if not retryable or attempt > cfg.data_retry_max:
            ctx.log.error("%s (attempt %d)", problem, attempt)
            return self.invalid(dict(req.fields, attempt=attempt) if retryable else req.fields, problem)
        delay = req.fields.get("retry_in", cfg.data_retry_delay_sec)
        if not isinstance(delay, (int, float)) or isinstance(delay, bool) or not 0 <= delay <= _MAX_RETRY_IN_SEC:
            delay = cfg.data_retry_delay_sec
        ctx.log.warning("%s; attempt %d of %d again in %g s", problem, attempt + 1, cfg.data_retry_max + 1, delay)
        # The transport turns the delay into the broker's own mechanism (docs/brokers.md).
        headers = {"AMQ_SCHEDULED_DELAY": str(int(delay * 1000))} if delay else {}
        return Outcome(self.queue, dict(req.fields, attempt=attempt + 1), headers, resend=True)

    def run_summary(self, ctx: JobContext, req: RunRequest, inst_dir: str, out_dir: str, log_dir: str,
                    base: str) -> None:
        summary = os.path.join(inst_dir, "sumRun_%s.py" % req.instrument)
        if not os.path.isfile(summary):
            return
        csv = os.path.join(out_dir, "%s_%s_runsummary.csv" % (req.instrument, req.ipts))
        result = ctx.run_process(
            [self.config.python_exec, summary, req.instrument, req.data_file, csv], out_dir,
            os.path.join(log_dir, base + ".summary.log"), os.path.join(log_dir, base + ".summary.err"))
        if result.returncode != 0 or result.kill_reason:
            ctx.log.warning("run summary failed (%s); reducing anyway", result.kill_reason or result.describe)

    def reduce(self, ctx: JobContext, req: RunRequest, script: str, info: ScriptInfo, inst_dir: str,
               out_dir: str, log_dir: str, base: str) -> Outcome:
        cfg = self.config
        staging = Staging(out_dir, base) if cfg.stage_output else None
        target = staging.dir if staging else out_dir
        args = [req.data_file, target.rstrip(os.sep) + os.sep]
        overrides = launcher.reduction_arguments(req.fields)
        vars_file = os.path.join(inst_dir, "reduce_vars.py")
        has_vars = os.path.isfile(vars_file)
        if overrides is None and not has_vars and not info.isis_main:
            return self.launch(ctx, req, [script] + args, info, out_dir, log_dir, base, staging, None)
        run_dir = launcher.RunDir()
        try:
            program = launcher.write_launcher(run_dir, script, args, info.isis_main, overrides,
                                              vars_file if has_vars else None)
            return self.launch(ctx, req, program, info, out_dir, log_dir, base, staging, run_dir)
        finally:
            run_dir.remove()

    def launch(self, ctx: JobContext, req: RunRequest, program: List[str], info: ScriptInfo, out_dir: str,
               log_dir: str, base: str, staging: Optional[Staging], run_dir: Optional[launcher.RunDir]) -> Outcome:
        cfg = self.config
        target = staging.dir if staging else out_dir
        prefix = [w.replace("{env}", info.conda_env) for w in cfg.conda_wrapper] if info.conda_env \
            else [cfg.python_exec]
        err_path = os.path.join(log_dir, base + ".err")
        started = time.time()
        try:
            result = ctx.run_process(prefix + program, target, os.path.join(log_dir, base + ".log"), err_path)
        except Cancelled:
            if staging is not None:
                staging.keep_partial(log_dir, base)
            raise
        if run_dir is not None:
            launcher.keep_vars_record(run_dir, os.path.join(log_dir, base + ".vars.json"), cfg.data_root)
        reply = self.decide(ctx, result, err_path)
        succeeded = reply.destination != cfg.destination("reduction_error")
        if staging is not None:
            if succeeded:
                results = staging.commit()
            else:
                ctx.log.info("partial results kept in %s", staging.keep_partial(log_dir, base))
                return reply
        else:
            results = produced_since(out_dir, started)
        if succeeded and info.isis_main and run_dir is not None:
            self.copy_to_main_dirs(ctx, results, launcher.main_result_dirs(run_dir))
        return reply

    def copy_to_main_dirs(self, ctx: JobContext, results: List[str], dirs: List[str]) -> None:
        for directory in dirs:
            if not os.path.isabs(directory) or not layout.within_root(self.config, directory):
                ctx.log.warning("main() returned %s, outside the data root: not copied there", directory)
                continue
            try:
                copy_results(results, directory, self.config.data_root)
            except (safefiles.UnsafePath, OSError) as err:
                ctx.log.warning("results not copied to %s: %s", directory, err)
                continue
            ctx.log.info("copied %d results to %s", len(results), directory)

    def decide(self, ctx: JobContext, result: ProcessResult, err_path: str) -> Outcome:
        cfg = self.config
        if ctx.cancelled_by is not None:
            return self.cancelled(ctx.work, ctx.cancelled_by)
        if result.kill_reason:
            ctx.log.error("reduction killed: %s", result.kill_reason)
            return self.failed(ctx, result.kill_reason)
        err_text = read_tail(err_path)
        if result.returncode == SKIP_EXIT_CODE:
            reason = skip_reason(err_text)
            ctx.log.info("skipped by the script: %s", reason)
            return Outcome(cfg.destination("reduction_not_needed"), outcome(ctx.work.fields, reason))
        if result.returncode == 0 and not err_text:
            os.remove(err_path)
            ctx.log.info("reduction complete")
            return ctx.reply(cfg.destination("reduction_complete"))
        line = error_line(err_text, result)
        for pattern in cfg.exception_patterns:
            if pattern.search(line):
                ctx.log.info("reduction complete, error excused by %r: %s", pattern.pattern, line)
                return Outcome(cfg.destination("reduction_complete"), outcome(ctx.work.fields, line))
        ctx.log.error("reduction failed: %s", line)
        return self.failed(ctx, line)


class HighMemoryReductionProcessor(ReductionProcessor):
    name = "reduction_himem"
    queue_key = "reduction_himem_data_ready"
