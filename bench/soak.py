"""The soak: untar and remove a tree on a ferry mount, over and over, for a set
time, sampling the memory (RSS) of the mount and the server. Run by bench/soak.

The question it answers (issue 13): does the mount's memory stay flat once it
has warmed up, or does it grow with every file it has seen? The verdict looks
at the second half of the run: every sample of the mount's RSS there must lie
within 10 % of that half's mean.
"""

import argparse
import csv
import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from systems import Ferry, MountTable, Processes, SetupError, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
FLAT = 0.10


def parse_args():
    p = argparse.ArgumentParser(description="untar/rm soak on a ferry mount, sampling its RSS")
    p.add_argument("--ferry", required=True, help="the ferry binary (bench/soak builds it)")
    p.add_argument("--minutes", type=float, default=30.0, help="how long to run (default 30)")
    p.add_argument("--tree", default="/usr/include", help="the directory to untar and remove")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    p.add_argument("--csv", help="where to write the samples (default bench/out/soak-TIME.csv)")
    return p.parse_args()


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class Sampler(threading.Thread):
    def __init__(self, ferry, interval, rounds):
        super().__init__(daemon=True)
        self.ferry, self.interval, self.rounds = ferry, interval, rounds
        self.samples = []  # (seconds, mount KiB, server KiB, rounds done)
        self.stop = threading.Event()
        self.start_time = time.monotonic()

    def take(self):
        self.samples.append((round(time.monotonic() - self.start_time, 1),
                             rss_kib(self.ferry.client.pid), rss_kib(self.ferry.server.pid),
                             self.rounds[0]))

    def run(self):
        while not self.stop.wait(self.interval):
            self.take()


def verdict(samples):
    """(second-half mean KiB, largest deviation from it as a fraction, flat?)."""
    half = [s[1] for s in samples[len(samples) // 2:] if s[1] is not None]
    if len(half) < 2:
        return None, None, False
    mean = sum(half) / len(half)
    worst = max(abs(v - mean) for v in half) / mean
    return mean, worst, worst <= FLAT


def main():
    cfg = parse_args()
    if os.geteuid() != 0:
        print("soak: needs root (it mounts and untars with owners)", file=sys.stderr)
        return 2
    tmp = os.path.realpath(tempfile.mkdtemp(prefix="ferry-soak-", dir="/var/tmp"))
    logs = os.path.join(tmp, "logs")
    os.mkdir(logs)
    procs, table = Processes(logs), MountTable()
    ferry = None
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        tarball = os.path.join(tmp, "tree.tar")
        parent, name = os.path.split(os.path.abspath(cfg.tree))
        subprocess.run(["tar", "cf", tarball, "-C", parent, name], check=True)
        entries = len(subprocess.run(["tar", "tf", tarball], check=True, capture_output=True,
                                     text=True).stdout.splitlines())
        ferry = Ferry(tmp, procs, table, cfg.ferry, free_port())
        ferry.remount()
        rounds = [0]
        sampler = Sampler(ferry, cfg.interval, rounds)
        sampler.take()
        sampler.start()
        deadline = time.monotonic() + cfg.minutes * 60
        print(f"soak: untar/rm of {cfg.tree} ({entries} entries) on {ferry.root} for {cfg.minutes:g} min, "
              f"sampling every {cfg.interval:g} s", file=sys.stderr)
        while time.monotonic() < deadline:
            for argv in (["tar", "xf", tarball, "-C", ferry.root],
                         ["rm", "-rf", os.path.join(ferry.root, name)]):
                done = subprocess.run(argv, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SetupError(f"{' '.join(argv)} failed ({done.returncode}) in round {rounds[0] + 1}: "
                                     f"{done.stderr.strip()[:500]}")
            rounds[0] += 1
        sampler.stop.set()
        sampler.join()
        sampler.take()
        report(cfg, entries, sampler.samples)
        return 0
    except (SetupError, subprocess.CalledProcessError) as e:
        print(f"soak: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if ferry:
            try:
                ferry.end()
            except SetupError as e:
                print(f"soak: {e}", file=sys.stderr)
        left = table.unmount_all()
        procs.stop_all()
        for p in left:
            print(f"soak: could not unmount {p}; run: umount -l {p}", file=sys.stderr)
        if not left:
            shutil.rmtree(tmp, ignore_errors=True)


def report(cfg, entries, samples):
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = cfg.csv or os.path.join(HERE, "out", f"soak-{stamp}.csv")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="", encoding="ascii") as f:
        w = csv.writer(f)
        w.writerow(["seconds", "mount_rss_kib", "server_rss_kib", "rounds"])
        w.writerows(samples)
    mean, worst, flat = verdict(samples)
    rounds = samples[-1][3]
    print(f"{rounds} rounds of untar + rm -rf ({rounds * entries} entries each way) in {cfg.minutes:g} min")
    print("   time   mount RSS  server RSS  rounds")
    step = max(1, len(samples) // 20)
    for s in samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else []):
        print(f"{s[0]:7.0f}s {fmt(s[1])} {fmt(s[2])} {s[3]:7d}")
    if mean is None:
        print("too few samples for a verdict")
        return
    half = [s[1] for s in samples[len(samples) // 2:] if s[1] is not None]
    print(f"second half: mount RSS {min(half) / 1024:.1f}-{max(half) / 1024:.1f} MiB, mean {mean / 1024:.1f} MiB, "
          f"largest deviation {worst * 100:.1f} % -> {'FLAT' if flat else 'NOT FLAT'} (within ±{FLAT * 100:.0f} %)")
    print(f"samples: {path}")


def fmt(kib):
    return "       ?" if kib is None else f"{kib / 1024:8.1f} MiB"


if __name__ == "__main__":
    sys.exit(main())
