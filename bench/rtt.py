"""The round-trip-time run (`bench/run --rtt 1,10,50`): the latency workloads of issue 11
with ferry and sshfs each behind a ferry-delay-proxy, at each round-trip time.

The order of a run:

1. check: sequential write and read on local (directly), and on ferry and sshfs alternately
   directly and through a proxy with no delay, SEQ_REPEAT times each, keeping the medians:
   the local reference, the proxy's own cost (at 0 ms through it ferry should keep at least
   80 % of its direct throughput), and the 0 ms figure the higher round-trip times are
   compared with;
2. each listed round-trip time, in increasing order: every workload, on ferry and sshfs
   through a fresh pair of proxies (and on local once, at the first of them, as the
   reference; nothing delays it).

Within a round-trip time the systems take turns per workload, as in the loopback run,
each with a fresh mount.
"""

import os
import shutil

from systems import DelayProxy, Local
from workloads import Workload, create_files, ls_lr, rm_tree, seq_read, seq_write, tar_md5, untar

# The round-trip time the targets are stated at; above it no ratio may be worse.
TARGET_RTT = 10.0
# At TARGET_RTT sequential throughput must keep this fraction of its 0 ms figure.
SEQ_KEEP = 0.5
# The proxy at 0 ms must leave ferry this fraction of its direct throughput.
PROXY_KEEP = 0.8
SEQ_KEYS = ("seq_write", "seq_read")
# Times the sequential pair is measured directly and at 0 ms (alternating); the median counts.
SEQ_REPEAT = 3

# target: ferry ÷ sshfs at TARGET_RTT (issue 11); the sequential pair has none (SEQ_KEEP instead).
RTT_WORKLOADS = [
    Workload("seq_write", "sequential write {big} (dd conv=fsync)", seq_write, True),
    Workload("seq_read", "sequential read {big} (dd, caches dropped)", seq_read, True),
    Workload("untar", "untar {tree} (tar xf as root)", untar, True, 10.0),
    Workload("ls_lr", "ls -lR of the tree (caches dropped)", ls_lr, True, 3.0),
    Workload("tar_md5", "tar c | md5sum of the tree (caches dropped)", tar_md5, False, 3.0),
    Workload("create", "create {files} empty files in one directory", create_files, True, 10.0),
    Workload("rm", "rm -rf the tree", rm_tree, True, 5.0),
]
RTT_KEYS = [w.key for w in RTT_WORKLOADS]


def parse_rtts(text):
    """'1,10,50' -> [1.0, 10.0, 50.0] (sorted, unique); ValueError with the reason otherwise."""
    out = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            raise ValueError(f"'{part}' is not a number of milliseconds") from None
        if not (0 <= v <= 2000):
            raise ValueError(f"'{part}': a round-trip time from 0 to 2000 ms")
        out.add(v)
    if not out:
        raise ValueError("no round-trip time given")
    return sorted(out)


def rtt_key(v):
    """The key of a round-trip time in the result file: '0', '0.5', '10'."""
    return f"{v:g}"


def plan(rtts, keys):
    """[(phase, [workload keys])]: 'check' (the sequential pair directly and at 0 ms, see `run`), then each
    listed RTT with every workload (at 0 ms without the sequential pair, which 'check' measured)."""
    seq = [k for k in keys if k in SEQ_KEYS]
    out = [("check", seq)] if seq else []
    for r in rtts:
        ks = [k for k in keys if not (r == 0 and k in SEQ_KEYS)]
        if ks:
            out.append((rtt_key(r), ks))
    return out


def median(ms):
    """The measurement with the median figure of those that succeeded (else the last), with every figure
    kept in its detail."""
    good = sorted((m for m in ms if m.ok), key=lambda m: m.value)
    pick = good[(len(good) - 1) // 2] if good else ms[-1]
    pick.detail["runs"] = [m.value if m.ok else None for m in ms]
    return pick


def clear_exports(systems):
    """What one round-trip time's workloads left on the servers' side, removed there (untimed)."""
    for s in systems:
        if isinstance(s, Local):
            continue
        for name in ("tree", "many"):
            shutil.rmtree(os.path.join(s.export, name), ignore_errors=True)


def start_proxies(cfg, systems, procs, rtt):
    out = {}
    for s in systems:
        if isinstance(s, Local):
            continue
        target = s.port if s.name == "ferry" else s.sshd.port
        out[s.name] = DelayProxy(procs, cfg.proxy, f"proxy-{s.name}-{rtt_key(rtt)}ms", target, rtt)
    return out


def run(cfg, systems, procs, measure, describe, results, labels):
    """Every phase of the plan; fills `results` ({'direct': {...}, 'rtt': {key: {workload: {system: m}}}}).

    `measure(w, s, cfg)` runs one workload on one system; `describe(m)` is its one-line summary.

    The 'check' phase measures the sequential pair SEQ_REPEAT times on each system, alternating
    directly and through 0 ms proxies, and keeps the median of each: the proxy's own cost is a
    ratio of two figures measured side by side, and the 0 ms figure is what every RTT is compared with.
    """
    by_key = {w.key: w for w in RTT_WORKLOADS}
    local_done = set()
    results.setdefault("direct", {})
    results.setdefault("rtt", {})

    def one(phase, w, s, proxies):
        for p in proxies.values():
            p.check(procs)
        s.via = proxies.get(s.name)
        try:
            print(f"[{phase}] {w.title.format(**labels)} — {s.name} ... ", end="", flush=True)
            m = measure(w, s, cfg)
            print(("ok " if m.ok else "FAILED ") + describe(m), flush=True)
            return m
        finally:
            if getattr(s, "via", None) is not None:
                s.via = None
                s.end()  # no mount outlives the route it was made through

    for phase, keys in plan(cfg.rtts, cfg.only or RTT_KEYS):
        rtt = 0.0 if phase == "check" else float(phase)
        proxies = {}
        try:
            print(f"-- {'sequential pair directly and at ' if phase == 'check' else ''}{rtt_key(rtt)} ms "
                  f"round-trip time (ferry-delay-proxy, {rtt / 2:g} ms each way)", flush=True)
            proxies = start_proxies(cfg, systems, procs, rtt)
            clear_exports(systems)
            if phase == "check":
                direct, zero = results["direct"], results["rtt"].setdefault("0", {})
                for key in keys:
                    w = by_key[key]
                    direct[key], zero[key] = {}, {}
                    for s in systems:
                        if isinstance(s, Local):
                            direct[key]["local"] = median([one("direct", w, s, {}) for _ in range(SEQ_REPEAT)])
                            local_done.add(key)
                            continue
                        runs = [(one("direct", w, s, {}), one("0 ms", w, s, proxies)) for _ in range(SEQ_REPEAT)]
                        direct[key][s.name] = median([a for a, _ in runs])
                        zero[key][s.name] = median([b for _, b in runs])
                continue
            into = results["rtt"].setdefault(phase, {})
            for key in keys:
                w = by_key[key]
                into[key] = {}
                for s in systems:
                    if isinstance(s, Local):
                        # Local is measured once: the sequential pair in 'check', the rest at the first RTT.
                        if key in local_done:
                            continue
                        local_done.add(key)
                    into[key][s.name] = one(f"{phase} ms", w, s, proxies)
        finally:
            for p in proxies.values():
                p.stop(procs)
    return results
