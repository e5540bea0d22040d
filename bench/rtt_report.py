"""Tables (terminal and Markdown) and the chart (SVG drawn by hand) of a round-trip-time run.

A result file of `bench/run --rtt` holds `direct` ({workload: {system: measurement}}, no proxy)
and `rtt` ({"0": ..., "10": ...}, through ferry-delay-proxy at that round-trip time in ms).
"""

import math

from report import SYSTEMS, _first_line, _text, caption, failures, fmt_value, md_escape, ratio
from rtt import PROXY_KEEP, RTT_WORKLOADS, SEQ_KEEP, SEQ_KEYS, TARGET_RTT, rtt_key

BY_KEY = {w.key: w for w in RTT_WORKLOADS}
TARGET = rtt_key(TARGET_RTT)


def proxy_version(binary):
    return _first_line([binary, "--version"])


# ---------------------------------------------------------------- numbers


def workloads(report):
    """The RTT workloads this report has, in the run's order."""
    have = set(report["direct"])
    for ws in report["rtt"].values():
        have |= set(ws)
    return [w for w in RTT_WORKLOADS if w.key in have]


def rtts(report):
    """The round-trip times every workload ran at (the --rtt list), as keys: ['1', '10', '50']."""
    return [rtt_key(r) for r in report["config"]["rtts"]]


def seq_phases(report):
    """Where the sequential pair ran: 'direct', '0', then the listed RTTs."""
    phases = ["direct"] + (["0"] if "0" in report["rtt"] else []) + [p for p in rtts(report) if p != "0"]
    return [p for p in phases if any(result(report, p, k) for k in SEQ_KEYS)]


def result(report, phase, key):
    """{system: measurement} of one workload in one phase ('direct' or an RTT key)."""
    where = report["direct"] if phase == "direct" else report["rtt"].get(phase, {})
    return dict(where.get(key) or {})


def local_of(report, key):
    """Local is measured once (directly, or at the first RTT): its figure for every RTT."""
    for phase in ["direct"] + sorted(report["rtt"], key=float):
        m = result(report, phase, key).get("local")
        if m:
            return m
    return None


def with_local(report, phase, key):
    res = result(report, phase, key)
    if "local" not in res and local_of(report, key):
        res["local"] = local_of(report, key)
    return res


def timed_out(m):
    return bool(m) and (m.get("timed_out") or any("timed out" in e for e in m.get("errors", [])))


def rtt_ratio(w, res):
    """(ferry ÷ sshfs oriented so > 1 is ferry better, is_lower_bound).

    When sshfs timed out and ferry finished, sshfs took at least its timeout: the ratio is at
    least sshfs's seconds ÷ ferry's seconds. None when there is nothing to compare.
    """
    f, s = res.get("ferry"), res.get("sshfs")
    r = ratio(w, f, s)
    if r is not None:
        return r, False
    if f and f.get("ok") and f.get("seconds") and timed_out(s) and s.get("seconds"):
        return s["seconds"] / f["seconds"], True
    return None, False


def fraction_of_zero(report, key, system, phase):
    """Sequential throughput at `phase` ÷ at 0 ms through the proxy (both must have succeeded)."""
    a = result(report, phase, key).get(system)
    b = result(report, "0", key).get(system)
    if not (a and b and a.get("ok") and b.get("ok") and a.get("value") and b.get("value")):
        return None
    return a["value"] / b["value"]


def proxy_keep(report, key, system="ferry"):
    """Throughput at 0 ms through the proxy ÷ directly: the proxy's own cost."""
    a = result(report, "0", key).get(system)
    b = result(report, "direct", key).get(system)
    if not (a and b and a.get("ok") and b.get("ok") and a.get("value") and b.get("value")):
        return None
    return a["value"] / b["value"]


def target_text(w, phase, report):
    p = float(phase)
    if p == TARGET_RTT:
        if w.key in SEQ_KEYS:
            return f"ferry ≥ {SEQ_KEEP:g} × its 0 ms"
        return f"≥ {w.target:g} × sshfs" if w.target else "—"
    if p > TARGET_RTT and TARGET in report["rtt"]:
        r, bound = rtt_ratio(w, result(report, TARGET, w.key))
        return f"≥ its {TARGET} ms ratio" + ("" if r is None else f" ({'>' if bound else ''}{r:.2f}×)")
    return "—"


def verdict(w, phase, report):
    """'met', 'NOT MET', 'NOT MET (ferry failed)', 'n/a (…)' or '—' (no target at this RTT)."""
    p = float(phase)
    judged = p == TARGET_RTT or (p > TARGET_RTT and TARGET in report["rtt"])
    if not judged:
        return "—"
    res = result(report, phase, w.key)
    f = res.get("ferry")
    if not f:
        return "not run"
    if not f["ok"]:
        return "NOT MET (ferry failed)"
    if p == TARGET_RTT:
        if w.key in SEQ_KEYS:
            frac = fraction_of_zero(report, w.key, "ferry", phase)
            return "n/a (no 0 ms figure)" if frac is None else "met" if frac >= SEQ_KEEP else "NOT MET"
        if not w.target:
            return "—"
        r, bound = rtt_ratio(w, res)
        if r is None:
            return "n/a (no sshfs figure)"
        if r >= w.target:
            return "met"
        return "n/a (sshfs timed out)" if bound else "NOT MET"
    # Above the target RTT: completes, and no ratio worse than at the target RTT.
    r, bound = rtt_ratio(w, res)
    r10, bound10 = rtt_ratio(w, result(report, TARGET, w.key))
    if r is None or r10 is None:
        return "n/a (no ratio to compare)"
    if r >= r10:
        return "met" if not bound10 else "n/a (sshfs timed out at 10 ms)"
    return "n/a (sshfs timed out)" if bound else "NOT MET"


def fmt_ratio(r, bound, res):
    f, s = res.get("ferry"), res.get("sshfs")
    if f and not f["ok"]:
        return "ferry failed"
    if r is None:
        return "—"
    text = f"{'> ' if bound else ''}{r:.2f}×"
    if s and not s["ok"]:
        text += " (sshfs timed out)" if timed_out(s) else " (sshfs failed)"
    return text


def requests(m):
    """(sent, waited) totals of FERRY_STATS for one ferry measurement; None where not counted."""
    stats = ((m or {}).get("detail") or {}).get("ferry_requests") or {}
    sent, waited = stats.get("sent"), stats.get("waited")
    return (sum(sent.values()) if sent is not None else None,
            sum(waited.values()) if waited is not None else None)


def fmt_count(n):
    return "—" if n is None else f"{n:,}"


def by_op(counts, limit=6):
    ops = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{op} {n:,}" for op, n in ops[:limit])
    return text + (f", +{len(ops) - limit} more" if len(ops) > limit else "")


# ---------------------------------------------------------------- tables

PHASE_HEADER = ["workload", "local", "ferry", "sshfs", "ferry ÷ sshfs", "target", "met",
                "ferry requests sent", "ferry round trips waited", "failures"]


def phase_cells(report, phase, plain):
    out = []
    for w in workloads(report):
        res = with_local(report, phase, w.key)
        if not res.get("ferry") and not res.get("sshfs"):
            continue
        title = report["machine"]["workloads"].get(w.key, w.key)
        cells = {s: fmt_value(res.get(s)) for s in SYSTEMS}
        if w.key in SEQ_KEYS and phase != "0":
            for s in ("ferry", "sshfs"):
                frac = fraction_of_zero(report, w.key, s, phase)
                if frac is not None:
                    cells[s] += f" ({frac:.2f} of 0 ms)"
        r, bound = rtt_ratio(w, res)
        sent, waited = requests(res.get("ferry"))
        fails = failures(res, limit=2)
        if plain:
            fails = [f.split(":")[0] for f in fails]
        out.append([title, cells["local"], cells["ferry"], cells["sshfs"], fmt_ratio(r, bound, res),
                    target_text(w, phase, report), verdict(w, phase, report), fmt_count(sent),
                    fmt_count(waited), "; ".join(fails) or "none"])
    return out


def summary_header(report):
    head = ["workload"] + [f"{p} ms" for p in rtts(report)]
    if TARGET in rtts(report):
        head += [f"target at {TARGET} ms", f"met at {TARGET} ms"]
        head += [f"{p} ms: completes, not worse than {TARGET} ms" for p in rtts(report) if float(p) > TARGET_RTT]
    return head


def summary_cells(report):
    """ferry ÷ sshfs of every workload against RTT, with the issue's targets and verdicts."""
    out = []
    for w in workloads(report):
        row = [w.key]
        for p in rtts(report):
            res = result(report, p, w.key)
            r, bound = rtt_ratio(w, res)
            row.append(fmt_ratio(r, bound, res) if res else "not run")
        if TARGET in rtts(report):
            row += [target_text(w, TARGET, report), verdict(w, TARGET, report)]
            row += [verdict(w, p, report) for p in rtts(report) if float(p) > TARGET_RTT]
        out.append(row)
    return out


SEQ_HEADER_FIRST = ["workload", "system"]


def seq_header(report):
    return SEQ_HEADER_FIRST + [("direct (no proxy)" if p == "direct" else f"{p} ms") for p in seq_phases(report)]


def seq_cells(report):
    """Sequential throughput directly, at 0 ms and at each RTT, with the fraction of the 0 ms figure."""
    out = []
    for key in SEQ_KEYS:
        if key not in {w.key for w in workloads(report)}:
            continue
        for s in [x for x in ("ferry", "sshfs") if x in report["config"].get("systems", SYSTEMS)]:
            row = [key, s]
            for p in seq_phases(report):
                m = result(report, p, key).get(s)
                text = fmt_value(m)
                if p not in ("direct", "0"):
                    frac = fraction_of_zero(report, key, s, p)
                    text += "" if frac is None else f" ({frac:.2f})"
                elif p == "0":
                    keep = proxy_keep(report, key, s)
                    text += "" if keep is None else f" ({keep:.2f} of direct)"
                row.append(text)
            if len(row) > 2:
                out.append(row)
    return out


def proxy_line(report):
    parts = []
    for key, what in (("seq_write", "write"), ("seq_read", "read")):
        keep = proxy_keep(report, key)
        if keep is not None:
            parts.append(f"{keep:.2f} of its direct sequential {what} "
                         f"({'met' if keep >= PROXY_KEEP else 'NOT MET'})")
    if not parts:
        return None
    return (f"The proxy's own cost: at 0 ms through it ferry keeps " + " and ".join(parts) +
            f" (the proxy must leave at least {PROXY_KEEP:g}).")


def print_tables(report):
    blocks = [(summary_header(report), summary_cells(report))]
    for p in rtts(report):
        blocks.append(([f"[{p} ms] " + PHASE_HEADER[0]] + PHASE_HEADER[1:], phase_cells(report, p, plain=True)))
    blocks.append((seq_header(report), seq_cells(report)))
    for header, body in blocks:
        if not body:
            continue
        widths = [max(len(str(r[i])) for r in [header] + body) for i in range(len(header))]
        for r in [header, ["-" * n for n in widths]] + body:
            print("  ".join(str(c).ljust(n) for c, n in zip(r, widths)).rstrip())
        print()
    line = proxy_line(report)
    if line:
        print(line)
    for p in ["direct"] + sorted(report["rtt"], key=float):
        for w in workloads(report):
            for f in failures(result(report, p, w.key)):
                print(f"FAILED  [{p}{'' if p == 'direct' else ' ms'}] {w.key} — {f}")


def md_table(header, body):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(md_escape(x) for x in r) + " |" for r in body]
    return out


def duration(seconds):
    if seconds is None:
        return "?"
    return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"


def markdown(report):
    m, c = report["machine"], report["config"]
    line, load = caption(report)
    out = [f"Round-trip-time run of {line}; {load}; the run took {duration(m.get('seconds'))}."
           + (f" Note: {m['note']}." if m.get("note") else ""), ""]
    if m.get("quick"):
        out += ["**Quick run** (smaller files): for development, not for comparison.", ""]
    out += ["ferry and sshfs each reach their server through ferry-delay-proxy on loopback, which holds every "
            "chunk for half the round-trip time in each direction; the local directory is measured once, "
            "directly. Ratios are oriented so that above 1 means ferry is better (more per second, or less "
            "time); \"> x\" means sshfs timed out, so ferry is at least that much better.", ""]
    out += [f"**ferry ÷ sshfs against round-trip time** (targets of issue 11 at {TARGET} ms; above it no "
            "ratio may be worse than at 10 ms):", ""]
    out += md_table(summary_header(report), summary_cells(report))
    seq = seq_cells(report)
    if seq:
        out += ["", f"**Sequential throughput** directly, through the proxy at 0 ms (with the fraction of the "
                    f"direct figure), and at each round-trip time (with the fraction of the 0 ms figure; "
                    f"ferry must keep ≥ {SEQ_KEEP:g} at {TARGET} ms):", ""]
        out += md_table(seq_header(report), seq)
        line = proxy_line(report)
        if line:
            out += ["", line]
    for p in rtts(report):
        out += ["", f"**{p} ms round-trip time** (ferry requests: from `FERRY_STATS=1` at unmount, summed over "
                    "the measurement's mounts; *round trips waited* counts the requests an application waited "
                    "for, \"—\" when this ferry does not report them):", ""]
        out += md_table(PHASE_HEADER, phase_cells(report, p, plain=False))
    detail = []
    for w in workloads(report):
        f = result(report, TARGET if TARGET in report["rtt"] else (rtts(report) or ["0"])[0], w.key).get("ferry")
        stats = ((f or {}).get("detail") or {}).get("ferry_requests") or {}
        if stats.get("sent") is not None:
            text = f"- {w.key}: sent {by_op(stats['sent'])}"
            if stats.get("waited") is not None:
                text += f"; waited for {by_op(stats['waited'])}"
            detail.append(text)
    if detail:
        where = TARGET if TARGET in report["rtt"] else (rtts(report) or ["0"])[0]
        out += ["", f"ferry's requests by operation at {where} ms:", ""] + detail
    out += ["", "Systems:", ""]
    out += [f"- {name}: `{md_escape(d)}`" for name, d in m.get("systems", {}).items()]
    if m.get("proxy"):
        out.append(f"- proxy: `{md_escape(m['proxy'])}`, one instance per system and round-trip time")
    out += ["", f"Sizes: sequential file {c['big_mib']} MiB, tree {c['tree']} ({c.get('tree_entries', '?')} "
                f"entries), {c['files']} files, timeout {c['timeout']} s per measurement. {m['sshfs'].strip()}.",
            ""]
    return "\n".join(out)


# ---------------------------------------------------------------- chart

SHORT = {"seq_write": "sequential write", "seq_read": "sequential read", "untar": "untar tree",
         "ls_lr": "ls -lR cold", "tar_md5": "tar c | md5sum cold", "create": "create files",
         "rm": "rm -rf tree"}
LINE_COLOURS = {"seq_write": "#17becf", "seq_read": "#7f7f7f", "untar": "#2e9e4f", "ls_lr": "#9467bd",
                "tar_md5": "#8c564b", "create": "#e377c2", "rm": "#bcbd22"}
SYSTEM_COLOURS = {"ferry": "#1f6fb4", "sshfs": "#e08a1e"}


def write_svg(report, path):
    ws = workloads(report)
    xs_a = rtts(report)
    width, height = 1000, 470
    top, bottom = 100, 380
    ax = (70, 520)    # ferry ÷ sshfs against RTT, log scale
    bx = (660, 960)   # sequential throughput ÷ 0 ms, linear
    series = {}
    for w in ws:
        series[w.key] = [rtt_ratio(w, result(report, p, w.key)) for p in xs_a]
    values = [r for pts in series.values() for r, _ in pts if r] + [w.target for w in ws if w.target]
    lo = min([0.5] + values) / 1.4
    hi = max([2.0] + values) * 1.4
    lo_l, hi_l = math.log10(lo), math.log10(hi)

    def xa(i):
        return ax[0] + 30 + i * ((ax[1] - ax[0] - 60) / max(1, len(xs_a) - 1)) if len(xs_a) > 1 \
            else (ax[0] + ax[1]) / 2

    def ya(v):
        return bottom - (math.log10(v) - lo_l) / (hi_l - lo_l) * (bottom - top)

    m = report["machine"]
    line, load = caption(report)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           _text(12, 22, "ferry vs sshfs against round-trip time (ferry-delay-proxy on loopback)"
                 + (" (quick run)" if m.get("quick") else ""), 16, weight="bold"),
           _text(12, 40, line, 11, fill="#444"),
           _text(12, 55, f"{load} · run took {duration(m.get('seconds'))}"
                 + (f" · {m['note']}" if m.get("note") else ""), 11, fill="#444"),
           _text((ax[0] + ax[1]) / 2, top - 22, f"ferry ÷ sshfs (log scale; ▬ = target at {TARGET} ms)", 12,
                 "middle", "bold"),
           _text((bx[0] + bx[1]) / 2, top - 22, "sequential throughput ÷ its 0 ms figure", 12, "middle", "bold")]
    # Panel A: grid, axes.
    for t in (0.1, 0.2, 0.5, 1, 2, 3, 5, 10, 20, 50, 100, 200):
        if lo <= t <= hi:
            y = ya(t)
            out.append(f'<line x1="{ax[0]}" y1="{y:.1f}" x2="{ax[1]}" y2="{y:.1f}" '
                       f'stroke="{"#555" if t == 1 else "#ddd"}" stroke-width="1"/>')
            out.append(_text(ax[0] - 6, y + 4, f"{t:g}×", 10, "end", fill="#555"))
    for i, p in enumerate(xs_a):
        out.append(f'<line x1="{xa(i):.1f}" y1="{top}" x2="{xa(i):.1f}" y2="{bottom}" stroke="#eee"/>')
        out.append(_text(xa(i), bottom + 16, f"{p} ms", 11, "middle", fill="#333"))
    out.append(_text((ax[0] + ax[1]) / 2, bottom + 32, "round-trip time", 11, "middle", fill="#333"))
    for w in ws:
        colour = LINE_COLOURS[w.key]
        pts = [(xa(i), ya(r), bound) for i, (r, bound) in enumerate(series[w.key]) if r]
        if len(pts) > 1:
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                       + " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in pts) + '"/>')
        for x, y, bound in pts:
            fill = "white" if bound else colour
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{fill}" stroke="{colour}" '
                       f'stroke-width="2"/>')
        for i, p in enumerate(xs_a):
            f = result(report, p, w.key).get("ferry")
            if f and not f["ok"]:
                out.append(_text(xa(i), ya(1) - 4, "✕", 14, "middle", "bold", "#d0453b"))
    # Targets on top of the lines, side by side where they coincide.
    if TARGET in xs_a:
        ti = xs_a.index(TARGET)
        k = 0
        for w in ws:
            if not w.target:
                continue
            x = xa(ti) + 13 + 13 * k
            k += 1
            out.append(f'<line x1="{x - 5:.1f}" y1="{ya(w.target):.1f}" x2="{x + 5:.1f}" y2="{ya(w.target):.1f}" '
                       f'stroke="{LINE_COLOURS[w.key]}" stroke-width="4"/>')
    # Panel B: the sequential pair against RTT (0 ms = 1).
    xs_b = ["0"] + [p for p in xs_a if p != "0"]
    fracs = {(k, s): [fraction_of_zero(report, k, s, p) for p in xs_b]
             for k in SEQ_KEYS for s in ("ferry", "sshfs")}
    top_b = max([1.2] + [v * 1.1 for vs in fracs.values() for v in vs if v])

    def xb(i):
        return bx[0] + 20 + i * ((bx[1] - bx[0] - 40) / max(1, len(xs_b) - 1))

    def yb(v):
        return bottom - min(v, top_b) / top_b * (bottom - top)

    t = 0.0
    while t <= top_b + 1e-9:
        out.append(f'<line x1="{bx[0]}" y1="{yb(t):.1f}" x2="{bx[1]}" y2="{yb(t):.1f}" '
                   f'stroke="{"#555" if t == 0 else "#ddd"}" stroke-width="1"/>')
        out.append(_text(bx[0] - 6, yb(t) + 4, f"{t:.2g}", 10, "end", fill="#555"))
        t += 0.25
    out.append(f'<line x1="{bx[0]}" y1="{yb(SEQ_KEEP):.1f}" x2="{bx[1]}" y2="{yb(SEQ_KEEP):.1f}" '
               f'stroke="#111" stroke-width="2" stroke-dasharray="6,4"/>')
    out.append(_text(bx[0] + 4, yb(SEQ_KEEP) + 14, f"target: ferry ≥ {SEQ_KEEP:g} at {TARGET} ms", 10,
                     fill="#111"))
    for i, p in enumerate(xs_b):
        out.append(_text(xb(i), bottom + 16, f"{p} ms", 11, "middle", fill="#333"))
    out.append(_text((bx[0] + bx[1]) / 2, bottom + 32, "round-trip time", 11, "middle", fill="#333"))
    for (k, s), vs in fracs.items():
        pts = [(xb(i), yb(v)) for i, v in enumerate(vs) if v is not None]
        dash = "" if k == "seq_write" else ' stroke-dasharray="5,3"'
        if len(pts) > 1:
            out.append(f'<polyline fill="none" stroke="{SYSTEM_COLOURS[s]}" stroke-width="2"{dash} points="'
                       + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
        for x, y in pts:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{SYSTEM_COLOURS[s]}"/>')
    # Legends.
    ly = bottom + 56
    x = 12
    for w in ws:
        label = SHORT.get(w.key, w.key)
        out.append(f'<rect x="{x}" y="{ly - 10}" width="12" height="12" fill="{LINE_COLOURS[w.key]}"/>')
        out.append(_text(x + 16, ly, label, 11))
        x += 30 + 7 * len(label)
    out.append(_text(12, ly + 20, "○ hollow: sshfs timed out (ferry at least this much better) · ✕ ferry failed",
                     11, fill="#444"))
    out.append(_text(bx[0] - 40, ly + 20, "— write · - - read · blue ferry · orange sshfs", 11, fill="#444"))
    out.append("</svg>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
