"""The workloads. Each one is a function of a `Context` returning a `Measurement`.

A workload prepares what it needs (untimed), times exactly the command a user
would run, and checks the result (exit status, error output, counts and
checksums, looked at from the server's side where that is stronger). Any
problem makes the measurement failed: it keeps its figure for reference, but
never counts as fast.
"""

import json
import os
import re
import signal
import subprocess
import time

from systems import Local


class Measurement:
    def __init__(self, value=None, unit="", seconds=None, errors=None, detail=None):
        self.value, self.unit, self.seconds = value, unit, seconds
        self.errors = list(errors or [])
        self.detail = dict(detail or {})
        self.cpu = None
        self.timed_out = False

    @property
    def ok(self):
        return not self.errors and self.value is not None

    def as_json(self):
        return {"value": self.value, "unit": self.unit, "seconds": self.seconds, "ok": self.ok,
                "errors": self.errors, "detail": self.detail, "cpu": self.cpu, "timed_out": self.timed_out}


class Run:
    def __init__(self, rc, out, err, seconds, timed_out):
        self.rc, self.out, self.err, self.seconds, self.timed_out = rc, out, err, seconds, timed_out

    def problems(self, ignore=None):
        """Exit status, timeout and error output, as messages; `ignore` filters harmless stderr lines."""
        found = []
        if self.timed_out:
            found.append(f"timed out after {self.seconds:.0f} s")
        elif self.rc != 0:
            found.append(f"exit status {self.rc}")
        lines = [l for l in self.err.splitlines() if l.strip() and not (ignore and ignore.search(l))]
        if lines:
            more = f" (+{len(lines) - 2} more lines)" if len(lines) > 2 else ""
            found.append("error output: " + " / ".join(l[:160] for l in lines[:2]) + more)
        return found


class Context:
    """What a workload sees of one system during one run."""

    def __init__(self, system, cfg, shared, timeout):
        self.system, self.cfg, self.shared, self.timeout = system, cfg, shared, timeout
        self.root, self.export = system.root, system.export
        self.cpu = None
        self.timed_out = False

    @property
    def is_local(self):
        return isinstance(self.system, Local)

    def remount(self):
        self.system.remount()

    def end(self):
        self.system.end()

    def drop_caches(self):
        subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=True, timeout=300)

    def run(self, argv, stdout_path=None, cpu=False, env=None):
        """Run one timed command with the workload's timeout; never hangs the benchmark."""
        before = self.system.cpu() if cpu else None
        out_f = open(stdout_path, "wb") if stdout_path else None
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out_f or subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, env=env)
        timed_out = False
        try:
            out, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            out, err = self._kill(proc)
        except BaseException:
            self._kill(proc)
            raise
        finally:
            if out_f:
                out_f.close()
        seconds = time.monotonic() - start
        self.timed_out = self.timed_out or timed_out
        if cpu:
            after = self.system.cpu()
            self.cpu = {k: round(after[k] - before[k], 3) for k in before
                        if before.get(k) is not None and after.get(k) is not None}
        return Run(proc.returncode, (out or b"").decode(errors="replace"),
                   (err or b"").decode(errors="replace"), seconds, timed_out)

    def _kill(self, proc):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            return proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            # Stuck in the kernel on a hung mount: abort the FUSE connection.
            abort = getattr(self.system, "abort", None)
            if abort:
                abort()
            try:
                return proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                return b"", b"(process could not be killed)"

    # Files the workloads share, prepared on the server side (never timed).

    def ensure_file(self, name, mib):
        """A file of `mib` MiB in the export; made there directly if the timed write did not leave one."""
        path = os.path.join(self.export, name)
        want = mib << 20
        if os.path.exists(path) and os.path.getsize(path) == want:
            return None
        chunk = b"\xa5" * (1 << 20)
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(chunk)
            os.fsync(f.fileno())
        return f"{name} prepared on the server side"


DD_STATS = re.compile(r"records (in|out)$|bytes .* copied|^\d+ bytes")


def dd_bytes(err):
    m = re.search(r"^(\d+) bytes", err, re.M)
    return int(m.group(1)) if m else None


def count_tree(path):
    """Entries below `path` (files, directories, symlinks), not counting `path` itself."""
    n = 0
    for _, dirs, files in os.walk(path):
        n += len(dirs) + len(files)
    return n


LS_ENTRY = re.compile(rb"^[-dlcbps][-rwxsStT]{9}", re.M)


def ls_entries(path):
    with open(path, "rb") as f:
        return len(LS_ENTRY.findall(f.read()))


# ---------------------------------------------------------------- workloads


def seq_write(c):
    c.remount()
    mib = c.cfg.big_mib
    # Every system starts from the same memory: on a VM, pages the guest has
    # not used yet cost much more to fill than reused ones, and the system
    # measured first would otherwise have them to itself.
    c.drop_caches()
    r = c.run(["dd", "if=/dev/zero", f"of={c.root}/big", "bs=1M", f"count={mib}", "conv=fsync"], cpu=True)
    c.end()
    errors = r.problems(ignore=DD_STATS)
    size = os.path.getsize(f"{c.export}/big") if os.path.exists(f"{c.export}/big") else None
    if size != mib << 20:
        errors.append(f"the server has {size} bytes, expected {mib << 20}")
    return Measurement((mib << 20) / 1e6 / r.seconds, "MB/s", r.seconds, errors)


def seq_read(c):
    note = c.ensure_file("big", c.cfg.big_mib)
    c.remount()
    c.drop_caches()
    r = c.run(["dd", f"if={c.root}/big", "of=/dev/null", "bs=1M"], cpu=True)
    c.end()
    errors = r.problems(ignore=DD_STATS)
    want = c.cfg.big_mib << 20
    if dd_bytes(r.err) != want:
        errors.append(f"read {dd_bytes(r.err)} bytes, expected {want}")
    return Measurement(want / 1e6 / r.seconds, "MB/s", r.seconds, errors, {"note": note} if note else None)


def _fio(c, engine, depth):
    note = c.ensure_file("big", c.cfg.big_mib)
    c.remount()
    c.drop_caches()
    r = c.run(["fio", "--name=randread", f"--filename={c.root}/big", "--rw=randread", "--bs=4k",
               "--direct=1", f"--ioengine={engine}", f"--iodepth={depth}", f"--size={c.cfg.big_mib}M",
               f"--runtime={c.cfg.fio_seconds}", "--time_based", "--allow_file_create=0",
               "--randrepeat=0", "--output-format=json"])
    c.end()
    errors = r.problems(ignore=re.compile(r"^fio: .*(note|warning)", re.I))
    iops = None
    try:
        job = json.loads(r.out[r.out.index("{"):])["jobs"][0]
        iops = job["read"]["iops"]
        if job.get("error"):
            errors.append(f"fio error {job['error']}")
        if not job["read"]["total_ios"]:
            errors.append("fio completed no reads")
    except (ValueError, KeyError, IndexError):
        errors.append("fio printed no JSON result")
    detail = {"fio": f"{engine}, iodepth={depth}, direct=1, bs=4k, {c.cfg.fio_seconds} s"}
    if note:
        detail["note"] = note
    return Measurement(iops, "IOPS", r.seconds, errors, detail)


def rand_qd1(c):
    return _fio(c, "psync", 1)


def rand_qd16(c):
    return _fio(c, "libaio", 16)


def parallel_read(c):
    mib, n = c.cfg.par_mib, 4
    for i in range(n):
        c.ensure_file(f"par{i}", mib)
    c.remount()
    c.drop_caches()
    errdir = os.path.join(c.cfg.tmp, "dd-errors")
    os.makedirs(errdir, exist_ok=True)
    script = ('rc=0; pids=""; for i in 0 1 2 3; do dd if="$1/par$i" of=/dev/null bs=1M 2>"$2/$i" & '
              'pids="$pids $!"; done; for p in $pids; do wait $p || rc=1; done; exit $rc')
    r = c.run(["bash", "-c", script, "_", c.root, errdir])
    c.end()
    errors = r.problems()
    for i in range(n):
        with open(os.path.join(errdir, str(i)), encoding="utf-8", errors="replace") as f:
            err = f.read()
        if dd_bytes(err) != mib << 20:
            errors.append(f"reader {i} read {dd_bytes(err)} bytes, expected {mib << 20}")
        errors += [f"reader {i}: {l}" for l in err.splitlines() if l.strip() and not DD_STATS.search(l)][:2]
    return Measurement(n * (mib << 20) / 1e6 / r.seconds, "MB/s", r.seconds, errors)


def untar(c):
    c.remount()
    prep = c.run(["mkdir", os.path.join(c.root, "tree")])  # untimed; a subprocess, so a hang times out
    r = c.run(["tar", "xf", c.cfg.tarball, "-C", os.path.join(c.root, "tree")])
    c.end()
    errors = prep.problems() + r.problems()
    have = count_tree(os.path.join(c.export, "tree"))
    if have != c.cfg.tree_entries:
        errors.append(f"the server has {have} entries, expected {c.cfg.tree_entries}")
    return Measurement(c.cfg.tree_entries / r.seconds, "entries/s", r.seconds, errors)


def ls_lr(c):
    c.remount()
    c.drop_caches()
    out = os.path.join(c.cfg.tmp, f"ls-lR.{c.system.name}")
    r = c.run(["ls", "-lR", os.path.join(c.root, "tree")], stdout_path=out)
    c.end()
    errors = r.problems()
    listed = ls_entries(out)
    if listed != c.cfg.tree_entries:
        errors.append(f"listed {listed} entries, expected {c.cfg.tree_entries}")
    return Measurement(c.cfg.tree_entries / r.seconds, "entries/s", r.seconds, errors)


def _tar_listing(c):
    """`tar tv` of what `tar c` makes of the tree: the metadata a mismatch shows up in (untimed)."""
    r = subprocess.run(["bash", "-c", 'set -o pipefail; tar cf - --sort=name -C "$1" "$2" | '
                        'tar tvf - --full-time --numeric-owner', "_", os.path.join(c.root, "tree"),
                        c.cfg.tree_name], capture_output=True, text=True, timeout=c.timeout)
    return r.stdout.splitlines()


def tar_md5(c):
    c.remount()
    c.drop_caches()
    r = c.run(["bash", "-c", 'set -o pipefail; tar cf - --sort=name -C "$1" "$2" | md5sum', "_",
               os.path.join(c.root, "tree"), c.cfg.tree_name])
    errors = r.problems()
    md5 = r.out.split()[0] if r.out.split() else None
    if c.is_local:
        c.shared["tree_md5"] = md5
        c.shared["tree_listing"] = _tar_listing(c)
    elif md5 != c.shared.get("tree_md5"):
        errors.append(f"md5 {md5} differs from the local directory's {c.shared.get('tree_md5')}")
        mine, ref = _tar_listing(c), c.shared.get("tree_listing") or []
        diff = [(a, b) for a, b in zip(mine, ref) if a != b]
        if diff:
            errors.append(f"{len(diff)} entries differ, first: '{diff[0][0]}' here, '{diff[0][1]}' locally")
        elif len(mine) != len(ref):
            errors.append(f"{len(mine)} entries here, {len(ref)} locally")
        else:
            errors.append("same names, modes, owners, sizes and times: file contents differ")
    c.end()
    return Measurement(r.seconds, "s", r.seconds, errors, {"md5": md5})


GIT_ENV = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null", LC_ALL="C")


def _git_status(c, repeat):
    if not os.path.exists(os.path.join(c.export, "repo")):
        subprocess.run(["tar", "xf", c.cfg.repo_tarball, "-C", c.export], check=True)
    c.remount()
    c.drop_caches()
    argv = ["git", "-C", os.path.join(c.root, "repo"), "status", "--porcelain"]
    if repeat:
        first = c.run(argv, env=GIT_ENV)
    r = c.run(argv, env=GIT_ENV)
    c.end()
    errors = (first.problems() if repeat else []) + r.problems()
    if r.out.strip():
        errors.append(f"git sees changes in a clean checkout: {r.out.strip().splitlines()[0]}")
    return Measurement(r.seconds, "s", r.seconds, errors)


def git_status_first(c):
    return _git_status(c, repeat=False)


def git_status_again(c):
    return _git_status(c, repeat=True)


CREATE = """
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
t = time.perf_counter()
for i in range(n):
    os.close(os.open(os.path.join(d, "f%05d" % i), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
print(time.perf_counter() - t)
"""


def create_files(c):
    c.remount()
    prep = c.run(["mkdir", os.path.join(c.root, "many")])  # untimed
    n = c.cfg.files
    r = c.run(["python3", "-c", CREATE, os.path.join(c.root, "many"), str(n)])
    c.end()
    errors = prep.problems() + r.problems()
    try:
        seconds = float(r.out.strip())
    except ValueError:
        seconds = r.seconds
        errors.append("the create loop printed no time")
    many = os.path.join(c.export, "many")
    have = len(os.listdir(many)) if os.path.isdir(many) else 0  # the errors above say why it is missing
    if have != n:
        errors.append(f"the server has {have} files, expected {n}")
    return Measurement(n / seconds, "files/s", seconds, errors)


def ls_l_many(c):
    c.remount()
    c.drop_caches()
    out = os.path.join(c.cfg.tmp, f"ls-l.{c.system.name}")
    r = c.run(["ls", "-l", os.path.join(c.root, "many")], stdout_path=out)
    c.end()
    errors = r.problems()
    listed = ls_entries(out)
    if listed != c.cfg.files:
        errors.append(f"listed {listed} entries, expected {c.cfg.files}")
    return Measurement(r.seconds, "s", r.seconds, errors)


def rm_tree(c):
    c.remount()
    r = c.run(["rm", "-rf", os.path.join(c.root, "tree")])
    c.end()
    errors = r.problems()
    if os.path.lexists(os.path.join(c.export, "tree")):
        errors.append(f"the tree is still on the server ({count_tree(os.path.join(c.export, 'tree'))} entries)")
    return Measurement(c.cfg.tree_entries / r.seconds, "entries/s", r.seconds, errors)


class Workload:
    def __init__(self, key, title, fn, higher_better, target=None, local_target=None, note=""):
        self.key, self.title, self.fn = key, title, fn
        self.higher_better = higher_better
        self.target, self.local_target = target, local_target  # ferry ÷ sshfs, ferry ÷ local
        self.note = note


# Targets are the (ratios in one run, ferry with default options);
# the extra workloads at the end have none.
WORKLOADS = [
    Workload("seq_write", "sequential write {big} (dd bs=1M conv=fsync, caches dropped)", seq_write, True, 2.0, 0.8),
    Workload("seq_read", "sequential read {big} (dd bs=1M, caches dropped)", seq_read, True, 5.0),
    Workload("rand_qd1", "random 4 KiB reads, O_DIRECT, QD1 (fio psync)", rand_qd1, True, 2.0),
    Workload("rand_qd16", "random 4 KiB reads, O_DIRECT, QD16 (fio libaio)", rand_qd16, True, 2.0),
    Workload("untar", "untar {tree} (tar xf as root)", untar, True, 3.0),
    Workload("ls_lr", "ls -lR of the tree (caches dropped)", ls_lr, True, 2.0),
    Workload("tar_md5", "tar c | md5sum of the tree (caches dropped)", tar_md5, False, 2.0),
    Workload("create", "create {files} empty files in one directory", create_files, True, 3.0),
    Workload("ls_l", "ls -l of those {files} (caches dropped)", ls_l_many, False, 2.0),
    Workload("rm", "rm -rf the tree", rm_tree, True, 1.5),
    Workload("parallel_read", "4 parallel readers, {par} each (caches dropped)", parallel_read, True),
    Workload("git_first", "git status, first in a fresh mount (caches dropped)", git_status_first, False),
    Workload("git_again", "git status, repeated in the same mount", git_status_again, False),
]
