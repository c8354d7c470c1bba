"""The proposal's shared area, fuzzed: random links, permissions and planted files, then reductions.

Each proposal of one instrument gets a random mix of what its users could do in
``<IPTS>/shared/``: symbolic links (at the output directory, at ``reduction_log``, at the
run's log files, in loops), hard links to files outside, a world-writable ``shared``,
a file where a directory should be, modules planted where a job might import them, and
sometimes a proposal directory that the facility itself made a link.  Then one real
agent on the real broker reduces one run of every proposal.  Invariants: every run is
answered exactly once, no planted code runs, and nothing outside the data tree changes.
``FS_FUZZ_SEED`` repeats a run; ``FS_FUZZ_PROPOSALS`` sets its size.
"""

import collections
import os
import random
import time
from typing import Callable, Dict, List

import pytest

pytestmark = [pytest.mark.broker, pytest.mark.fire]

INST = "FUZZ"
USER = 65534
SCRIPT = """
import sys
import reduce_helper
with open(sys.argv[2] + "result.txt", "w") as handle:
    handle.write(reduce_helper.VALUE)
"""
PLANTED = "open(%r, 'a').write(%r + '\\n')\nVALUE = 'planted'\n"
MODULES = ("reduce_helper.py", "reduce_vars.py", "json.py", "runpy.py", "sitecustomize.py")


class Proposal:
    """One proposal's tree and the hostile things done to it."""

    def __init__(self, facility, number: int, outside: str, store: str, ran: str, rng: random.Random) -> None:
        self.ipts = "IPTS-%d" % number
        self.run = number
        self.message = facility.run(INST, self.ipts, number)
        self.ipts_dir = os.path.dirname(os.path.dirname(self.message["data_file"]))
        self.out = facility.output_dir(INST, self.ipts)
        self.outside = outside
        self.victim = os.path.join(outside, "victim")
        self.store = store
        self.ran = ran
        self.base = os.path.basename(self.message["data_file"])
        self.done: List[str] = []
        actions: Dict[str, Callable[[], None]] = {
            "shared world-writable": self.shared_writable, "link autoreduce out": self.link_autoreduce,
            "link reduction_log out": self.link_log_dir, "link the .log out": self.link_log_file,
            "link the .err out": self.link_err_file, "hard link the .log": self.hard_link_log,
            "link loop": self.link_loop, "file for reduction_log": self.file_for_log_dir,
            "plant modules": self.plant_modules, "facility link": self.facility_link,
            "reduce_vars arguments": self.arguments,
        }
        for name in rng.sample(sorted(actions), rng.randint(1, 3)):
            if name == "facility link" and self.done:
                continue
            actions[name]()
            self.done.append(name)

    # -- the planting, as a proposal user would (a link owned by someone else than root
    #    or the service account, or made in a directory others can write) --
    def user_link(self, target: str, link: str) -> None:
        parent = os.path.realpath(os.path.dirname(link))
        if parent == self.outside or parent.startswith(self.outside + os.sep):
            return  # the user cannot write outside the data tree, not even through their own link
        try:
            os.makedirs(os.path.dirname(link), exist_ok=True)
        except OSError:  # an earlier change put a file or a dangling link on the way
            return
        if os.path.lexists(link):
            return
        os.symlink(target, link)
        if os.geteuid() == 0:
            os.lchown(link, USER, USER)
        else:
            os.chmod(os.path.dirname(link), 0o777)

    def shared_writable(self) -> None:
        os.makedirs(os.path.dirname(self.out), exist_ok=True)
        os.chmod(os.path.dirname(self.out), 0o1777)

    def link_autoreduce(self) -> None:
        if not os.path.exists(self.out):
            self.user_link(self.outside, self.out)

    def link_log_dir(self) -> None:
        self.user_link(self.outside, os.path.join(self.out, "reduction_log"))

    def link_log_file(self) -> None:
        self.user_link(self.victim, os.path.join(self.out, "reduction_log", self.base + ".log"))

    def link_err_file(self) -> None:
        self.user_link(self.victim, os.path.join(self.out, "reduction_log", self.base + ".err"))

    def hard_link_log(self) -> None:
        log_dir = os.path.join(self.out, "reduction_log")
        if os.path.islink(log_dir) or os.path.islink(self.out) or os.path.isfile(log_dir):
            return
        try:
            os.makedirs(log_dir, exist_ok=True)
        except OSError:
            return
        if not os.path.lexists(os.path.join(log_dir, self.base + ".log")):
            os.link(self.victim, os.path.join(log_dir, self.base + ".log"))

    def link_loop(self) -> None:
        self.user_link("reduction_log", os.path.join(self.out, "reduction_log"))

    def file_for_log_dir(self) -> None:
        try:
            os.makedirs(self.out, exist_ok=True)
        except OSError:
            return
        if not os.path.lexists(os.path.join(self.out, "reduction_log")):
            with open(os.path.join(self.out, "reduction_log"), "w") as handle:
                handle.write("not a directory")

    def plant_modules(self) -> None:
        for directory in (self.out, os.path.join(self.out, "reduction_log"), os.path.dirname(self.out)):
            if os.path.islink(directory) or os.path.isfile(directory) or os.path.islink(self.out):
                continue
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError:
                continue
            for name in MODULES:
                with open(os.path.join(directory, name), "w") as handle:
                    handle.write(PLANTED % (os.path.join(self.ran, "%s-%s" % (self.ipts, name)), name))

    def facility_link(self) -> None:
        """The facility keeps this proposal elsewhere and links it (root or service account, 0755)."""
        real = os.path.join(self.store, self.ipts)
        os.rename(self.ipts_dir, real)
        os.symlink(real, self.ipts_dir)

    def arguments(self) -> None:
        self.message["reduction_arguments"] = {"standard_vars": {"fuzz": self.run}}


def snapshot(directory: str) -> Dict[str, bytes]:
    """Every file's bytes and every link's target under ``directory``, links never followed."""
    out = {}
    for parent, dirs, files in os.walk(directory):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(parent, d))]:
            path = os.path.join(parent, name)
            if os.path.islink(path):
                out[os.path.relpath(path, directory)] = b"-> " + os.fsencode(os.readlink(path))
                continue
            with open(path, "rb") as handle:
                out[os.path.relpath(path, directory)] = handle.read()
    return out


def test_filesystem_fuzz(make_agent, facility, client, tmp_path, broker, reliability_rows):
    seed = int(os.environ.get("FS_FUZZ_SEED") or time.time())
    count = int(os.environ.get("FS_FUZZ_PROPOSALS", "60"))
    rng = random.Random(seed)
    outside, store, ran = (str(tmp_path / name) for name in ("outside", "store", "planted-code-ran"))
    for directory in (outside, store, ran):
        os.makedirs(directory)
    with open(os.path.join(outside, "victim"), "w") as handle:
        handle.write("precious")
    facility.script(INST, SCRIPT)
    facility.script(INST, "VALUE = 'instrument'\n", name="reduce_helper.py")
    proposals = [Proposal(facility, n, outside, store, ran, rng) for n in range(1, count + 1)]
    before = snapshot(outside)

    agent = make_agent(max_procs=4).start()
    for proposal in proposals:
        client.send(agent.q("reduction_data_ready"), proposal.message)
    answers = [agent.q("reduction_complete"), agent.q("reduction_error"), agent.q("postprocess_error")]
    try:
        client.wait_total(answers, count, timeout=180)
    except AssertionError as err:
        raise AssertionError("seed %d: %s" % (seed, err)) from None
    time.sleep(1)
    by_run = collections.defaultdict(list)
    for destination in answers:
        for body in client.get(destination):
            by_run[int(body["run_number"])].append((destination, body.get("error")))
    assert sorted(by_run) == list(range(1, count + 1)), "seed %d: runs not answered" % seed
    assert all(len(v) == 1 for v in by_run.values()), "seed %d: runs answered twice" % seed
    assert os.listdir(ran) == [], "seed %d: planted code ran: %s" % (seed, os.listdir(ran))
    assert snapshot(outside) == before, "seed %d: something was written outside the data tree" % seed
    completed = 0
    for proposal in proposals:
        destination, error = by_run[proposal.run][0]
        if destination == agent.q("reduction_complete"):
            completed += 1
            result = os.path.join(os.path.realpath(proposal.out), "result.txt")
            assert open(result).read() == "instrument", "seed %d: %s" % (seed, proposal.done)
        if proposal.done in (["facility link"], ["reduce_vars arguments"], ["plant modules"]):
            assert destination == agent.q("reduction_complete"), "seed %d: %s: %s" % (seed, proposal.done, error)
    assert agent.proc is not None and agent.proc.poll() is None

    kinds = collections.Counter(name for p in proposals for name in p.done)
    name = "filesystem_fuzz" if broker.kind == "activemq" else "filesystem_fuzz_%s" % broker.kind
    reliability_rows.record(
        name,
        "%d proposals of one instrument, each with 1-3 random hostile changes to its tree (%s); one run of "
        "each reduced by one agent at max_procs 4 through %s" % (
            count, ", ".join("%s %d" % (k, v) for k, v in sorted(kinds.items())), broker.kind),
        "%d of %d runs answered exactly once (%d completed, %d refused); 0 planted modules run; 0 files "
        "written or changed outside the data tree" % (len(by_run), count, completed, count - completed))
