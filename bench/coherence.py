#!/usr/bin/env python3
"""Coherent caches (issue 10), measured: how soon a change made elsewhere is seen, and what repeated work costs.

    bench/run --coherence            # three runs, medians; writes bench/results-coherence.md
    bench/run --coherence --quick    # one run, fewer samples, /usr/include/linux

In each run, on fresh mounts:

- visibility: a change (write+close, create, unlink, rename, chmod) made on one ferry mount is looked for on a
  second mount of the same export, which had the state before cached; and the same changes made by a process on
  the server (this script, writing in the export) looked for on a mount. The time from the change's system call
  returning to the other side seeing it, per kind: p50 and p99 over the samples.
- git status, repeated in the same mount, in a clean checkout of the tree (local, ferry, sshfs): the median of
  several runs after a first one.
- ls -lR, repeated in the same mount, of the unchanged tree (local, ferry, sshfs): the median time, and for ferry
  the requests it sent to the server during each repeat (`FERRY_STATS=1`, read at SIGUSR1).

The figures reported are the medians over the runs (`--runs`, 3 by default), as the machine is shared and noisy.
Python 3 standard library only; run through bench/run, which installs the tools and builds ferry.
"""

import argparse
import datetime
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from report import machine_info
from systems import Ferry, Local, MountTable, Processes, SetupError, Sshd, Sshfs, clean_up, free_port, is_mounted
from workloads import GIT_ENV, ls_entries

HERE = os.path.dirname(os.path.abspath(__file__))

KINDS = ("write+close", "create", "unlink", "rename", "chmod")
# How long a change may take to show before the sample counts as not seen (the lease is 60 s, the short
# timeout 1 s: anything near this is a failure of the notices, not a slow one).
PATIENCE = 10.0
TARGETS = {"mount": {"p50": 10.0, "p99": 50.0}, "server": {"p99": 100.0}}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/run --coherence", description=__doc__.split("\n\n")[0])
    p.add_argument("--coherence", action="store_true", help="this mode (bench/run passes it on)")
    p.add_argument("--quick", action="store_true", help="one run, 20 samples per kind, /usr/include/linux")
    p.add_argument("--runs", type=int, help="runs to take medians over (default 3; 1 with --quick)")
    p.add_argument("--samples", type=int, help="changes of each kind per direction and run (default 100)")
    p.add_argument("--repeats", type=int, default=5, help="repeated git status / ls -lR per run (default 5)")
    p.add_argument("--tree", help="the tree to list and to check out (default /usr/include)")
    p.add_argument("--systems", default="local,ferry,sshfs", help="subset of local,ferry,sshfs (local is needed)")
    p.add_argument("--timeout", type=int, default=300, help="seconds before a command counts as hung")
    p.add_argument("--workdir", default="/var/tmp", help="where the temp dir goes (default /var/tmp)")
    p.add_argument("--ssh-port", type=int, default=2222, help="loopback port for the private sshd")
    p.add_argument("--note", default="", help="a line for the report (e.g. that the machine was busy)")
    p.add_argument("--out", help="where results-coherence.md goes (default: bench/ for a full run, else bench/out/)")
    p.add_argument("--ferry", default=os.path.join(HERE, "..", "target", "release", "ferry"), help="ferry binary")
    p.add_argument("--proxy", help=argparse.SUPPRESS)  # bench/run may pass it for other modes
    a = p.parse_args(argv)
    full = not (a.quick or a.samples or a.tree or a.runs) and a.systems == "local,ferry,sshfs"
    a.runs = a.runs or (1 if a.quick else 3)
    a.samples = a.samples or (20 if a.quick else 100)
    a.tree = a.tree or ("/usr/include/linux" if a.quick else "/usr/include")
    a.systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    if set(a.systems) - {"local", "ferry", "sshfs"} or "local" not in a.systems or "ferry" not in a.systems:
        p.error("--systems: choose from local,ferry,sshfs; local and ferry are needed")
    a.out = a.out or (HERE if full else os.path.join(HERE, "out"))
    return a


# ---------------------------------------------------------------- helpers


def percentile(values, q):
    """The q-quantile (0..1) of `values`, nearest rank."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def run(argv, timeout, env=None, stdout_path=None):
    """One command with a timeout; never hangs. Returns (seconds, rc, stderr)."""
    out_f = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out_f, stderr=subprocess.PIPE,
                            start_new_session=True, env=env)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        err = (err or b"") + b"\n(timed out)"
    finally:
        if stdout_path:
            out_f.close()
    return time.monotonic() - start, proc.returncode, (err or b"").decode(errors="replace")


def wait_until(cond, patience=PATIENCE):
    """Polls `cond` as an application would; the seconds it took, or None when it never held."""
    start = time.perf_counter()
    while True:
        if cond():
            return time.perf_counter() - start
        if time.perf_counter() - start > patience:
            return None


def exists(path):
    try:
        os.lstat(path)
        return True
    except FileNotFoundError:
        return False


def size_of(path):
    try:
        return os.lstat(path).st_size
    except FileNotFoundError:
        return None


def mode_of(path):
    try:
        return os.lstat(path).st_mode & 0o777
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------- visibility


def visibility(a, b, samples):
    """Changes made in directory `a`, looked for in directory `b` (the same one seen elsewhere): per kind, the
    milliseconds each sample took to be seen, and how many were never seen."""
    results = {}
    for kind in KINDS:
        times, missed = [], 0
        for i in range(samples):
            ms = one_change(kind, a, b, f"{kind.replace('+', '_')}-{i}")
            if ms is None:
                missed += 1
            else:
                times.append(ms)
        results[kind] = {"ms": times, "missed": missed}
    return results


def one_change(kind, a, b, name):
    """Prepares `name` so that `b` has its state cached, changes it in `a`, and times until `b` sees it."""
    pa, pb = os.path.join(a, name), os.path.join(b, name)
    if kind == "write+close":
        with open(pa, "wb") as f:
            f.write(b"x" * 10)
        if wait_until(lambda: size_of(pb) == 10) is None:
            raise SetupError(f"{pb} never appeared with its first contents")
        time.sleep(0.02)
        with open(pa, "wb") as f:
            f.write(b"y" * 20)
        seen = wait_until(lambda: size_of(pb) == 20)
        if seen is not None:
            with open(pb, "rb") as f:
                if f.read() != b"y" * 20:
                    raise SetupError(f"{pb}: the new size is shown but not the new contents")
    elif kind == "create":
        if exists(pb):
            raise SetupError(f"{pb} exists before it was made")
        time.sleep(0.02)
        os.close(os.open(pa, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        seen = wait_until(lambda: exists(pb))
    elif kind == "unlink":
        open(pa, "wb").close()
        if wait_until(lambda: exists(pb)) is None:
            raise SetupError(f"{pb} never appeared")
        time.sleep(0.02)
        os.unlink(pa)
        seen = wait_until(lambda: not exists(pb))
    elif kind == "rename":
        open(pa, "wb").close()
        if wait_until(lambda: exists(pb)) is None or exists(pb + ".new"):
            raise SetupError(f"{pb} never appeared, or {pb}.new was there")
        time.sleep(0.02)
        os.rename(pa, pa + ".new")
        seen = wait_until(lambda: exists(pb + ".new") and not exists(pb))
    elif kind == "chmod":
        with open(pa, "wb") as f:
            f.write(b"m")
        os.chmod(pa, 0o644)
        if wait_until(lambda: mode_of(pb) == 0o644) is None:
            raise SetupError(f"{pb} never appeared")
        time.sleep(0.02)
        os.chmod(pa, 0o600)
        seen = wait_until(lambda: mode_of(pb) == 0o600)
    else:
        raise ValueError(kind)
    return None if seen is None else seen * 1000


def summarize(results):
    out = {}
    every = []
    for kind, r in results.items():
        every += r["ms"]
        out[kind] = {"p50": percentile(r["ms"], 0.5), "p99": percentile(r["ms"], 0.99),
                     "max": max(r["ms"]) if r["ms"] else None, "samples": len(r["ms"]), "missed": r["missed"]}
    out["all"] = {"p50": percentile(every, 0.5), "p99": percentile(every, 0.99),
                  "max": max(every) if every else None, "samples": len(every),
                  "missed": sum(r["missed"] for r in results.values())}
    return out


# ---------------------------------------------------------------- ferry's second mount and statistics


class SecondMount:
    """Another `ferry mount` of the same server, for changes made on one mount and looked for on the other."""

    def __init__(self, ferry, procs, table, base):
        self.ferry, self.procs, self.table = ferry, procs, table
        self.root = os.path.join(base, "ferry-mnt2")
        os.makedirs(self.root, exist_ok=True)
        self.proc = procs.start("ferry-mount2", [ferry.binary, "mount", f"127.0.0.1:{ferry.port}", self.root]
                                 + ferry.security() + ferry.credentials())
        deadline = time.monotonic() + 30
        while not is_mounted(self.root):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SetupError(f"the second ferry mount did not come up: {procs.log_tail('ferry-mount2')}")
            time.sleep(0.02)
        table.record(self.root)

    def end(self):
        if not self.table.unmount(self.root):
            raise SetupError(f"cannot unmount {self.root}; run: umount -l {self.root}")
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.procs.stop(self.proc)


SENT = re.compile(r"^ferry: requests sent to the server(?: so far)?: (.*)$")


def sent_counts(procs, log_name):
    """Every `FERRY_STATS` line of requests sent, in order, as dicts of operation -> count."""
    out = []
    try:
        with open(os.path.join(procs.log_dir, f"{log_name}.log"), encoding="utf-8", errors="replace") as f:
            for line in f:
                m = SENT.match(line.strip())
                if m:
                    counts = {}
                    for part in filter(None, (p.strip() for p in m.group(1).split(","))):
                        op, _, n = part.rpartition(" ")
                        counts[op] = int(n)
                    out.append(counts)
    except OSError:
        pass
    return out


def stats_now(system, procs):
    """The requests the ferry mount sent so far (asked for with SIGUSR1)."""
    before = len(sent_counts(procs, "ferry-mount"))
    os.kill(system.client.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = sent_counts(procs, "ferry-mount")
        if len(lines) > before:
            return lines[-1]
        time.sleep(0.02)
    raise SetupError("ferry mount printed no statistics on SIGUSR1 (is FERRY_STATS set?)")


def difference(after, before):
    return {op: n - before.get(op, 0) for op, n in after.items() if n - before.get(op, 0)}


# ---------------------------------------------------------------- repeated work


def repeated_git_status(system, cfg):
    """git status, first, then `repeats` times in the same mount: (times, errors)."""
    if not os.path.exists(os.path.join(system.export, "repo")):
        subprocess.run(["tar", "xf", cfg.repo_tarball, "-C", system.export], check=True)
    system.remount()
    argv = ["git", "-C", os.path.join(system.root, "repo"), "status", "--porcelain"]
    errors, times = [], []
    for i in range(cfg.repeats + 1):
        out = os.path.join(cfg.tmp, f"git.{system.name}")
        seconds, rc, err = run(argv, cfg.timeout, env=GIT_ENV, stdout_path=out)
        if rc != 0 or err.strip():
            errors.append(f"git status: exit {rc} {err.strip()[:200]}")
        elif os.path.getsize(out):
            with open(out, encoding="utf-8", errors="replace") as f:
                errors.append(f"git sees changes in a clean checkout: {f.readline().strip()}")
        if i:
            times.append(seconds)
    system.end()
    return times, errors


def repeated_ls_lr(system, cfg, procs):
    """ls -lR of the tree, first, then `repeats` times: (times, requests per repeat (ferry), errors)."""
    tree = os.path.join(system.export, "tree")
    if not os.path.exists(tree):
        os.mkdir(tree)
        subprocess.run(["tar", "xf", cfg.tarball, "-C", tree], check=True)
    system.remount()
    errors, times, requests = [], [], []
    counted = isinstance(system, Ferry)
    before = stats_now(system, procs) if counted else None
    for i in range(cfg.repeats + 1):
        out = os.path.join(cfg.tmp, f"ls.{system.name}")
        seconds, rc, err = run(["ls", "-lR", os.path.join(system.root, "tree")], cfg.timeout, stdout_path=out)
        if rc != 0 or err.strip():
            errors.append(f"ls -lR: exit {rc} {err.strip()[:200]}")
        if ls_entries(out) != cfg.tree_entries:
            errors.append(f"ls -lR listed {ls_entries(out)} entries, expected {cfg.tree_entries}")
        if counted:
            now = stats_now(system, procs)
            if i:
                requests.append(sum(difference(now, before).values()))
            before = now
        if i:
            times.append(seconds)
    system.end()
    return times, (requests if counted else None), errors


# ---------------------------------------------------------------- one run, all runs


def one_run(cfg, systems, procs, table):
    ferry = next(s for s in systems if isinstance(s, Ferry))
    result = {"visibility": {}, "git": {}, "ls": {}, "errors": []}
    # Visibility: two mounts of one export; changes on each side, and by a process on the server.
    ferry.remount()
    second = SecondMount(ferry, procs, table, cfg.tmp)
    try:
        base = f"vis-{int(time.time() * 1000)}"
        for d in (base, f"{base}-server"):
            os.mkdir(os.path.join(ferry.export, d))
        if wait_until(lambda: exists(os.path.join(second.root, f"{base}-server"))) is None:
            raise SetupError("the second mount never saw the test directories")
        result["visibility"]["mount"] = summarize(
            visibility(os.path.join(ferry.root, base), os.path.join(second.root, base), cfg.samples))
        result["visibility"]["server"] = summarize(
            visibility(os.path.join(ferry.export, f"{base}-server"), os.path.join(second.root, f"{base}-server"),
                       cfg.samples))
    finally:
        second.end()
        ferry.end()
    for s in systems:
        times, errors = repeated_git_status(s, cfg)
        result["git"][s.name] = {"times": times, "median": median(times), "errors": errors}
        times, requests, errors = repeated_ls_lr(s, cfg, procs)
        result["ls"][s.name] = {"times": times, "median": median(times), "requests": requests, "errors": errors}
    return result


def combine(runs):
    """Medians over the runs of each figure."""
    out = {"visibility": {}, "git": {}, "ls": {}}
    for side in ("mount", "server"):
        out["visibility"][side] = {}
        for kind in KINDS + ("all",):
            per = [r["visibility"][side][kind] for r in runs if side in r["visibility"]]
            out["visibility"][side][kind] = {k: median([p[k] for p in per]) for k in ("p50", "p99", "max")}
            out["visibility"][side][kind]["samples"] = sum(p["samples"] for p in per)
            out["visibility"][side][kind]["missed"] = sum(p["missed"] for p in per)
    for what in ("git", "ls"):
        for name in runs[0][what]:
            per = [r[what][name] for r in runs if name in r[what]]
            entry = {"median": median([p["median"] for p in per]),
                     "errors": [e for p in per for e in p["errors"]]}
            if what == "ls":
                reqs = [n for p in per for n in (p["requests"] or [])]
                entry["requests"] = reqs if per[0]["requests"] is not None else None
            out[what][name] = entry
    return out


# ---------------------------------------------------------------- report


def fmt_ms(v):
    return "—" if v is None else f"{v:.1f} ms" if v < 100 else f"{v:.0f} ms"


def fmt_s(v):
    return "—" if v is None else f"{v:.3f} s"


def verdict(ok):
    return "met" if ok else "NOT MET"


def markdown(report):
    m, c, r = report["machine"], report["config"], report["combined"]
    vis = r["visibility"]
    out = [f"Coherence benchmark of {m['date'][:16].replace('T', ' ')} UTC · {m['nproc']} cores · {m['cpu']} · "
           f"kernel {m['kernel']} · {m['memory_gib']} GiB RAM · ferry {m['ferry_commit']}; load average "
           f"{m['load_start'][0]:.1f} at start, {m.get('load_end', [0])[0]:.1f} at end."
           + (f" Note: {m['note'].rstrip('.')}." if m.get("note") else ""),
           "",
           f"Medians over {c['runs']} runs (fresh mounts each), {c['samples']} changes of each kind per direction "
           f"and run; ferry with its default options (lease 60 s). Time from the change's system call returning "
           f"to the other side seeing it.",
           "",
           "| change | mount → mount p50 | p99 | max | server → mount p50 | p99 | max |",
           "|---|---|---|---|---|---|---|"]
    for kind in KINDS + ("all",):
        a, b = vis["mount"][kind], vis["server"][kind]
        label = "**every kind**" if kind == "all" else kind
        out.append(f"| {label} | {fmt_ms(a['p50'])} | {fmt_ms(a['p99'])} | {fmt_ms(a['max'])} | "
                   f"{fmt_ms(b['p50'])} | {fmt_ms(b['p99'])} | {fmt_ms(b['max'])} |")
    missed = vis["mount"]["all"]["missed"] + vis["server"]["all"]["missed"]
    a, b = vis["mount"]["all"], vis["server"]["all"]
    out += ["",
            f"Targets: mount → mount p50 ≤ {TARGETS['mount']['p50']:g} ms and p99 ≤ {TARGETS['mount']['p99']:g} ms: "
            + verdict(a["p50"] is not None and a["p50"] <= TARGETS["mount"]["p50"] and a["p99"] is not None
                      and a["p99"] <= TARGETS["mount"]["p99"] and vis["mount"]["all"]["missed"] == 0)
            + f"; server → mount p99 ≤ {TARGETS['server']['p99']:g} ms: "
            + verdict(b["p99"] is not None and b["p99"] <= TARGETS["server"]["p99"]
                      and vis["server"]["all"]["missed"] == 0)
            + f". Changes never seen within {PATIENCE:g} s: {missed}.", ""]
    out += ["| repeated in the same mount | local | ferry | sshfs | ferry vs local | target | ferry requests per repeat |",
            "|---|---|---|---|---|---|---|"]
    git, ls = r["git"], r["ls"]

    def cell(d, name):
        e = d.get(name)
        if not e:
            return "not run"
        return fmt_s(e["median"]) + (" (FAILED)" if e["errors"] else "")

    def vs_local(d):
        f, l = d.get("ferry"), d.get("local")
        if not f or not l or not f["median"] or not l["median"]:
            return None
        return l["median"] / f["median"]

    g = vs_local(git)
    out.append(f"| git status, clean checkout of the tree ({c['tree_entries']:,} entries) | {cell(git, 'local')} | "
               f"{cell(git, 'ferry')} | {cell(git, 'sshfs')} | {'—' if g is None else f'{g:.2f}×'} | ≥ 0.5 × local: "
               f"{verdict(g is not None and g >= 0.5 and not git['ferry']['errors'])} | — |")
    lr = vs_local(ls)
    reqs = ls["ferry"].get("requests") or []
    out.append(f"| ls -lR of the unchanged tree | {cell(ls, 'local')} | {cell(ls, 'ferry')} | {cell(ls, 'sshfs')} | "
               f"{'—' if lr is None else f'{lr:.2f}×'} | no request: "
               f"{verdict(bool(reqs) and max(reqs) == 0 and not ls['ferry']['errors'])} | "
               f"{', '.join(str(n) for n in reqs) or '—'} |")
    errors = [f"{what} {name}: {e}" for what in ("git", "ls") for name, d in r[what].items() for e in d["errors"]]
    errors += report.get("errors", [])
    if errors:
        out += ["", "Failures:", ""] + [f"- {e}" for e in errors[:20]]
    out += ["", f"Tree: {c['tree']} ({c['tree_entries']:,} entries); {c['repeats']} repeats after a first run, "
                f"per run.", ""]
    return "\n".join(out)


# ---------------------------------------------------------------- main


def main(argv=None):
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        sys.exit("bench: needs root (mounts, sshd, untar with owners)")
    if not os.path.exists(cfg.ferry):
        sys.exit(f"bench: no ferry binary at {cfg.ferry}; build it with `cargo build --release` or use bench/run")
    from bench import on_sigterm, prepare  # the main benchmark's tree and checkout preparation
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_sigterm)
    os.environ["FERRY_STATS"] = "1"  # ferry mounts print their requests (on SIGUSR1 and at unmount)
    cfg.tmp = os.path.realpath(tempfile.mkdtemp(prefix="ferry-bench-coherence-", dir=cfg.workdir))
    logs = os.path.join(cfg.tmp, "logs")
    os.mkdir(logs)
    procs, table = Processes(logs), MountTable()
    systems, sshd, runs, errors = [], None, [], []
    started = datetime.datetime.now(datetime.timezone.utc)
    info = machine_info(cfg)
    status = 0
    try:
        print(f"bench: temp dir {cfg.tmp}; preparing the tree ({cfg.tree}) and a git checkout of it", flush=True)
        prepare(cfg)
        systems.append(Local(cfg.tmp))
        systems.append(Ferry(cfg.tmp, procs, table, os.path.abspath(cfg.ferry), free_port()))
        if "sshfs" in cfg.systems:
            sshd = Sshd(cfg.tmp, procs, free_port(cfg.ssh_port))
            systems.append(Sshfs(cfg.tmp, procs, table, sshd))
        for i in range(cfg.runs):
            print(f"bench: coherence run {i + 1} of {cfg.runs}", flush=True)
            one = one_run(cfg, systems, procs, table)
            runs.append(one)
            v = one["visibility"]
            print(f"  visibility mount→mount p50 {fmt_ms(v['mount']['all']['p50'])} p99 "
                  f"{fmt_ms(v['mount']['all']['p99'])}; server→mount p50 {fmt_ms(v['server']['all']['p50'])} p99 "
                  f"{fmt_ms(v['server']['all']['p99'])}; git status "
                  + ", ".join(f"{n} {fmt_s(d['median'])}" for n, d in one["git"].items())
                  + "; ls -lR " + ", ".join(f"{n} {fmt_s(d['median'])}" for n, d in one["ls"].items())
                  + f"; ferry requests per repeated ls -lR {one['ls']['ferry']['requests']}", flush=True)
    except (KeyboardInterrupt, SetupError) as e:
        print(f"\nbench: {e or 'interrupted'}", file=sys.stderr)
        errors.append(str(e) or "interrupted")
        status = 1
    except Exception as e:  # noqa: BLE001 - report any failure with the cleanup done
        print(f"\nbench: {type(e).__name__}: {e}", file=sys.stderr)
        errors.append(f"{type(e).__name__}: {e}")
        status = 1
    finally:
        left = clean_up(systems, sshd, procs, table, cfg.tmp)
        status = status or (1 if left else 0)
    info["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    info["load_end"] = os.getloadavg()
    if not runs:
        return status or 1
    report = {"kind": "coherence", "machine": info,
              "config": {"runs": len(runs), "samples": cfg.samples, "repeats": cfg.repeats, "tree": cfg.tree,
                         "tree_entries": cfg.tree_entries, "systems": cfg.systems},
              "runs": runs, "combined": combine(runs), "errors": errors}
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    raw = os.path.join(HERE, "out", f"results-coherence-{started.strftime('%Y%m%dT%H%M%SZ')}.json")
    with open(raw, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    out = cfg.out if not status else os.path.join(HERE, "out")
    os.makedirs(out, exist_ok=True)
    md = os.path.join(out, "results-coherence.md")
    text = markdown(report)
    with open(md, "w", encoding="utf-8") as f:
        f.write(text)
    print()
    print(text)
    print(f"bench: wrote {md} and {raw}")
    return status


if __name__ == "__main__":
    sys.exit(main())
