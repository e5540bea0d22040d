#!/usr/bin/env python3
"""ferry benchmark: the same workloads on a local directory, ferry and sshfs, in one run.

Run it through bench/run (which installs the tools and builds ferry); see bench/README.md.
Python 3 standard library only.
"""

import argparse
import datetime
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import rtt
import rtt_report
from report import combine, machine_info, markdown, print_table, write_svg
from systems import Ferry, Local, MountTable, Processes, SetupError, Sshd, Sshfs, clean_up, free_port
from workloads import WORKLOADS, Context, Measurement

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SYSTEMS = "local,ferry,ferry-insecure,sshfs"
# What ferry-insecure is measured on: enough to show the cost of TLS.
INSECURE_WORKLOADS = ("seq_write", "seq_read")


def parse_args():
    p = argparse.ArgumentParser(
        prog="bench/run",
        description="Runs each workload on a local directory, ferry and sshfs (all on the same disk, "
                    "over loopback) and prints one table with ferry's ratios and the issue's targets.")
    p.add_argument("--rtt", metavar="MS,MS,...",
                   help="the round-trip-time run instead: the latency workloads of issue 11 with ferry and sshfs "
                        "behind ferry-delay-proxy at each of these round-trip times in ms, e.g. 1,10,50 "
                        "(sequential write/read also at 0 ms and directly); see bench/README.md")
    p.add_argument("--quick", action="store_true",
                   help="development run: 64 MiB files, /usr/include/linux as the tree, 2,000 files, 3 s fio "
                        "(with --rtt: 64 MiB, 200 files)")
    p.add_argument("--size-mib", type=int, help="size of the sequential/fio file in MiB (default 1024; "
                   "256 with --rtt)")
    p.add_argument("--tree", help="directory tarred once and used as the tree (default /usr/include; "
                   "/usr/include/linux with --rtt)")
    p.add_argument("--files", type=int, help="files created in one directory (default 10000; 1000 with --rtt)")
    p.add_argument("--fio-seconds", type=int, help="runtime of each fio job (default 10)")
    p.add_argument("--timeout", type=int, help="seconds before a workload counts as hung (default 300; 600 with "
                   "--rtt, where sshfs needs about 400 s to untar the tree at 50 ms)")
    p.add_argument("--only", help="comma-separated workload keys: " + ",".join(w.key for w in WORKLOADS)
                   + " (with --rtt: " + ",".join(rtt.RTT_KEYS) + ")")
    p.add_argument("--systems", default=DEFAULT_SYSTEMS,
                   help=f"subset of {DEFAULT_SYSTEMS} (ferry-insecure: ferry without TLS and authentication, "
                        "for the sequential workloads only, to show what TLS costs)")
    p.add_argument("--workdir", default="/var/tmp",
                   help="where the temp dir goes; all three systems keep their data there (default /var/tmp)")
    p.add_argument("--ssh-port", type=int, default=2222, help="loopback port for the private sshd (default 2222, "
                   "or a free one)")
    p.add_argument("--note", default="", help="a line for the caption, e.g. 'machine shared with other jobs'")
    p.add_argument("--out", help="write results.md / results.svg here (default: bench/ for a full run of "
                   "everything, bench/out/ otherwise)")
    p.add_argument("--runs", type=int, default=1,
                   help="full runs in a row (each as its own `bench/run`); the table is then of each system's "
                        "median per workload, with each run's ratios below it (default 1; not with --rtt)")
    p.add_argument("--raw-to", help=argparse.SUPPRESS)  # where a run of --runs writes its raw result
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, trees) for inspection")
    p.add_argument("--render", metavar="JSON",
                   help="only redraw results.md and results.svg from a raw result file of bench/out/")
    p.add_argument("--ferry", default=os.path.join(HERE, "..", "target", "release", "ferry"),
                   help="ferry binary (bench/run passes the one it built)")
    p.add_argument("--proxy", default=os.path.join(HERE, "..", "target", "release", "ferry-delay-proxy"),
                   help="ferry-delay-proxy binary, for --rtt (bench/run passes the one it built)")
    a = p.parse_args()
    # Only a full run of everything with the default sizes replaces the published results.
    full = not (a.quick or a.only or a.size_mib or a.files or a.fio_seconds or a.tree) \
        and a.systems == DEFAULT_SYSTEMS
    a.rtts = None
    if a.rtt is not None:
        try:
            a.rtts = rtt.parse_rtts(a.rtt)
        except ValueError as e:
            p.error(f"--rtt: {e}")
        a.big_mib = a.size_mib or (64 if a.quick else 256)
        a.tree = a.tree or "/usr/include/linux"
        a.files = a.files or (200 if a.quick else 1000)
        a.timeout = a.timeout or 600
    else:
        a.big_mib = a.size_mib or (64 if a.quick else 1024)
        a.tree = a.tree or ("/usr/include/linux" if a.quick else "/usr/include")
        a.files = a.files or (2000 if a.quick else 10000)
        a.timeout = a.timeout or 300
    a.fio_seconds = a.fio_seconds or (3 if a.quick else 10)
    a.par_mib = max(1, a.big_mib // 4)
    a.systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    unknown = set(a.systems) - set(DEFAULT_SYSTEMS.split(","))
    if unknown or "local" not in a.systems:
        p.error(f"--systems: choose from {DEFAULT_SYSTEMS}; local is needed (it is the reference)")
    if a.rtts is not None:
        # The round-trip run compares ferry as users run it with sshfs; what
        # TLS costs is the loopback run's question.
        a.systems = [s for s in a.systems if s != "ferry-insecure"]
    keys = set(rtt.RTT_KEYS) if a.rtts is not None else {w.key for w in WORKLOADS}
    a.only = [k.strip() for k in a.only.split(",")] if a.only else None
    if a.only and set(a.only) - keys:
        p.error(f"--only: unknown workloads {sorted(set(a.only) - keys)}; known: {sorted(keys)}")
    if a.only and a.rtts is not None:
        a.only = [k for k in rtt.RTT_KEYS if k in a.only]  # in the run's order
    if a.runs < 1:
        p.error("--runs: at least 1")
    if a.runs > 1 and (a.rtts is not None or a.render):
        p.error("--runs: only for the loopback run")
    a.full = full
    a.out = a.out or (HERE if full else os.path.join(HERE, "out"))
    return a


def human_size(mib):
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"


class Terminated(Exception):
    pass


def on_sigterm(signum, frame):
    raise Terminated(f"signal {signum}")


def prepare(cfg):
    """Tar the tree once, and make a git checkout of it as a tarball (both untimed)."""
    cfg.tarball = os.path.join(cfg.tmp, "tree.tar")
    parent, name = os.path.split(os.path.abspath(cfg.tree))
    cfg.tree_name = name
    subprocess.run(["tar", "cf", cfg.tarball, "-C", parent, name], check=True)
    listing = subprocess.run(["tar", "tf", cfg.tarball], check=True, capture_output=True, text=True).stdout
    cfg.tree_entries = len(listing.splitlines())
    repo = os.path.join(cfg.tmp, "repo")
    os.mkdir(repo)
    subprocess.run(["tar", "xf", cfg.tarball, "-C", repo], check=True)
    git = ["git", "-C", repo, "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "tree"]):
        subprocess.run(git + args, check=True, env=env, capture_output=True)
    cfg.repo_tarball = os.path.join(cfg.tmp, "repo.tar")
    subprocess.run(["tar", "cf", cfg.repo_tarball, "-C", cfg.tmp, "repo"], check=True)
    shutil.rmtree(repo)


def write_outputs(report, out):
    """Print the table and write the Markdown and the SVG chart of a run (loopback or --rtt) into `out`."""
    os.makedirs(out, exist_ok=True)
    if report.get("kind") == "rtt":
        rtt_report.print_tables(report)
        md, svg = os.path.join(out, "results-rtt.md"), os.path.join(out, "results-rtt.svg")
        with open(md, "w", encoding="utf-8") as f:
            f.write(rtt_report.markdown(report))
        rtt_report.write_svg(report, svg)
    else:
        print_table(report, WORKLOADS)
        md, svg = os.path.join(out, "results.md"), os.path.join(out, "results.svg")
        with open(md, "w", encoding="utf-8") as f:
            f.write(markdown(report, WORKLOADS))
        write_svg(report, WORKLOADS, svg)
    return md, svg


def render(cfg):
    with open(cfg.render, encoding="utf-8") as f:
        report = json.load(f)
    md, svg = write_outputs(report, cfg.out)
    print(f"bench: wrote {md} and {svg}")
    return 0


def several_runs(cfg):
    """`cfg.runs` full runs in a row, each a child `bench.py` with the same options, then one report of
    their medians (see `report.combine`)."""
    forwarded = []
    skip = False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if arg in ("--runs", "--out"):
            skip = True
            continue
        if arg.startswith(("--runs=", "--out=")):
            continue
        forwarded.append(arg)
    reports = []
    scratch = tempfile.mkdtemp(prefix="ferry-bench-runs-")
    try:
        for i in range(cfg.runs):
            print(f"bench: run {i + 1} of {cfg.runs}", flush=True)
            raw = os.path.join(scratch, f"run-{i + 1}.json")
            status = subprocess.run([sys.executable, "-B", os.path.abspath(__file__)] + forwarded
                                    + ["--out", os.path.join(scratch, f"run-{i + 1}"), "--raw-to", raw]).returncode
            if status != 0 or not os.path.exists(raw):
                print(f"bench: run {i + 1} did not finish (status {status}); no combined results", file=sys.stderr)
                return status or 1
            with open(raw, encoding="utf-8") as f:
                reports.append(json.load(f))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = combine(reports, WORKLOADS)
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    stamp = reports[0]["machine"]["date"][:19].replace("-", "").replace(":", "")
    raw = os.path.join(HERE, "out", f"results-{stamp}Z-median-of-{cfg.runs}.json")
    with open(raw, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    print()
    md, svg = write_outputs(report, cfg.out)
    print(f"\nbench: wrote {md}, {svg} and {raw}")
    return 0


def main():
    cfg = parse_args()
    if cfg.render:
        return render(cfg)
    if cfg.runs > 1:
        return several_runs(cfg)
    if os.geteuid() != 0:
        sys.exit("bench: needs root (mounts, drop_caches, sshd, untar with owners)")
    if not stat.S_ISCHR(os.stat("/dev/null").st_mode):
        sys.exit("bench: /dev/null is not the null device (something replaced it with a file); as root: "
                 "rm /dev/null && mknod -m 666 /dev/null c 1 3")
    if not os.path.exists(cfg.ferry):
        sys.exit(f"bench: no ferry binary at {cfg.ferry}; build it with `cargo build --release` or use bench/run")
    if cfg.rtts is not None and not os.path.exists(cfg.proxy):
        sys.exit(f"bench: no ferry-delay-proxy binary at {cfg.proxy}; build it with "
                 "`cargo build --release -p ferry-delay-proxy` or use bench/run")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGHUP, on_sigterm)
    cfg.shared = {}  # what one system's run leaves for the others (the local tree's md5)
    cfg.tmp = os.path.realpath(tempfile.mkdtemp(prefix="ferry-bench-", dir=cfg.workdir))
    logs = os.path.join(cfg.tmp, "logs")
    os.mkdir(logs)
    procs, table = Processes(logs), MountTable()
    systems, sshd = [], None
    results = {}
    started = datetime.datetime.now(datetime.timezone.utc)
    info = machine_info(cfg)
    status = 0
    try:
        print(f"bench: temp dir {cfg.tmp}; preparing the tree ({cfg.tree}) and a git checkout of it", flush=True)
        prepare(cfg)
        systems.append(Local(cfg.tmp))
        if "ferry" in cfg.systems:
            systems.append(Ferry(cfg.tmp, procs, table, os.path.abspath(cfg.ferry), free_port()))
        if "ferry-insecure" in cfg.systems:
            systems.append(Ferry(cfg.tmp, procs, table, os.path.abspath(cfg.ferry), free_port(), insecure=True))
        if "sshfs" in cfg.systems:
            sshd = Sshd(cfg.tmp, procs, free_port(cfg.ssh_port))
            systems.append(Sshfs(cfg.tmp, procs, table, sshd))
        info["systems"] = {s.name: s.describe() for s in systems}
        for s in systems:
            print(f"  {s.name}: {s.describe()}", flush=True)
        labels = {"big": human_size(cfg.big_mib), "files": f"{cfg.files:,}", "par": human_size(cfg.par_mib),
                  "tree": f"{cfg.tree} ({cfg.tree_entries:,} entries)"}
        info["workloads"] = {}
        if cfg.rtts is not None:
            for w in rtt.RTT_WORKLOADS:
                if not cfg.only or w.key in cfg.only:
                    info["workloads"][w.key] = w.title.format(**labels)
            rtt.run(cfg, systems, procs, lambda w, s, c: measure(w, s, c, results), describe, results, labels)
        else:
            for w in WORKLOADS:
                if cfg.only and w.key not in cfg.only:
                    continue
                info["workloads"][w.key] = w.title.format(**labels)
                results[w.key] = {}
                for s in systems:
                    if s.name == "ferry-insecure" and w.key not in INSECURE_WORKLOADS:
                        continue
                    print(f"{w.title.format(**labels)} — {s.name} ... ", end="", flush=True)
                    results[w.key][s.name] = m = measure(w, s, cfg, results)
                    print(("ok " if m.ok else "FAILED ") + describe(m), flush=True)
    except (KeyboardInterrupt, Terminated) as e:
        print(f"\nbench: interrupted ({str(e) or 'Ctrl-C'}); cleaning up", file=sys.stderr)
        status = 130
    except SetupError as e:
        print(f"\nbench: {e}", file=sys.stderr)
        status = 1
    finally:
        left = clean_up(systems, sshd, procs, table, cfg.tmp, keep=cfg.keep)
        if left:
            status = status or 1
    info["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    info["load_end"] = os.getloadavg()
    info["seconds"] = round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds())
    if cfg.rtts is not None:
        info["proxy"] = rtt_report.proxy_version(cfg.proxy)
    if any(results.values()):
        config = {k: getattr(cfg, k) for k in ("big_mib", "par_mib", "tree", "tree_entries", "files",
                                               "fio_seconds", "timeout", "systems") if hasattr(cfg, k)}
        if cfg.rtts is not None:
            config["rtts"] = cfg.rtts
            report = {"kind": "rtt", "machine": info, "config": config,
                      "direct": {k: {s: m.as_json() for s, m in v.items()} for k, v in results["direct"].items()},
                      "rtt": {r: {k: {s: m.as_json() for s, m in v.items()} for k, v in ws.items()}
                              for r, ws in results["rtt"].items()}}
            name = "results-rtt"
        else:
            report = {"machine": info, "config": config,
                      "results": {k: {s: m.as_json() for s, m in v.items()} for k, v in results.items()}}
            name = "results"
        os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
        stamp = started.strftime("%Y%m%dT%H%M%SZ")
        raw = os.path.join(HERE, "out", f"{name}-{stamp}.json")
        with open(raw, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
        if cfg.raw_to and not status:
            shutil.copyfile(raw, cfg.raw_to)
        print()
        if status:
            cfg.out = os.path.join(HERE, "out")  # an unfinished run never replaces the published results
        md, svg = write_outputs(report, cfg.out)
        print(f"\nbench: wrote {md}, {svg} and {raw}")
    return status


def measure(w, s, cfg, results):
    ctx = Context(s, cfg, cfg.shared, cfg.timeout)
    counted = isinstance(s, Ferry)
    if counted:
        s.stats = []
    try:
        m = w.fn(ctx)
    except (SetupError, OSError, subprocess.SubprocessError, ValueError) as e:
        # A mount that fails, a server that died, a file that is missing: this workload failed
        # on this system; the run goes on.
        m = Measurement(None, "", None, [str(e) if isinstance(e, SetupError) else f"{type(e).__name__}: {e}"])
        try:
            s.end()
        except SetupError as e2:
            m.errors.append(str(e2))
    m.cpu = ctx.cpu
    m.timed_out = ctx.timed_out
    if ctx.timed_out:
        m.value = None  # an unfinished run has no rate
    if counted and s.stats:
        # What FERRY_STATS printed at each unmount of this measurement (usually one mount).
        m.detail["ferry_requests"] = sum_stats(s.stats)
    return m


def sum_stats(stats):
    total = {"sent": None, "waited": None, "mounts": len(stats)}
    for one in stats:
        for kind in ("sent", "waited"):
            if one.get(kind) is None:
                continue
            into = total[kind] if total[kind] is not None else {}
            for op, n in one[kind].items():
                into[op] = into.get(op, 0) + n
            total[kind] = into
    return total


def describe(m):
    text = "-" if m.value is None else f"{m.value:,.3g} {m.unit}"
    if m.seconds is not None:
        text += f" ({m.seconds:.2f} s)"
    if m.cpu:
        text += " cpu " + ", ".join(f"{k} {v:.2f} s" for k, v in m.cpu.items())
    if m.errors:
        text += " — " + "; ".join(m.errors)
    return text


if __name__ == "__main__":
    if "--coherence" in sys.argv[1:]:
        # A mode of its own: coherent caches (issue 10), see bench/coherence.py.
        import coherence
        sys.exit(coherence.main())
    sys.exit(main())
