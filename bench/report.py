"""The table (terminal and Markdown) and the chart (SVG drawn by hand) of one run."""

import datetime
import json
import math
import os
import platform
import subprocess
from xml.sax.saxutils import escape

SYSTEMS = ("local", "ferry", "ferry-insecure", "sshfs")


def _first_line(argv):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


def _version_line(argv, marker):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return next((l.strip() for l in (r.stdout + r.stderr).splitlines() if marker in l), "?")


def machine_info(cfg):
    cpu = "?"
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="utf-8") as f:
        mem_kib = int(f.readline().split()[1])
    repo = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    # The last commit that changed ferry itself (anything outside bench/), and whether its code is modified.
    commit = _first_line(["git", "-C", repo, "log", "-1", "--format=%h", "--", ".", ":!bench"])
    dirty = subprocess.run(["git", "-C", repo, "diff", "--quiet", "HEAD", "--", ".", ":!bench"]).returncode
    commit += "-dirty" if dirty else ""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
        "memory_gib": round(mem_kib / 2**20, 1), "load_start": os.getloadavg(),
        "ferry_commit": commit, "sshfs": _version_line(["sshfs", "--version"], "SSHFS version"),
        "fio": _first_line(["fio", "--version"]), "note": cfg.note, "quick": cfg.quick,
    }


# ---------------------------------------------------------------- numbers


def ratio(w, mine, other):
    """mine ÷ other oriented so that > 1 means `mine` is better (faster, or takes less time)."""
    if not mine or not other or not mine.get("value") or not other.get("value"):
        return None
    a, b = mine["value"], other["value"]
    return a / b if w.higher_better else b / a


def target_text(w):
    parts = []
    if w.target:
        parts.append(f"≥ {w.target:g} × sshfs")
    if w.local_target:
        parts.append(f"≥ {w.local_target:g} × local")
    return ", ".join(parts) or "—"


def verdict(w, res):
    """'met', 'NOT MET', 'n/a …' or '—' (no target) for ferry on one workload."""
    if not (w.target or w.local_target):
        return "—"
    f = res.get("ferry")
    if not f:
        return "not run"
    if not f["ok"]:
        return "NOT MET (ferry failed)"
    checks = []
    for tgt, other in ((w.target, "sshfs"), (w.local_target, "local")):
        if tgt:
            r = ratio(w, f, res.get(other))
            if r is None:
                return f"n/a (no {other} figure)"
            checks.append(r >= tgt)
    return "met" if all(checks) else "NOT MET"


def fmt_value(m):
    if not m:
        return "not run"
    v, unit = m.get("value"), m.get("unit")
    if v is None:
        text = "—"
    elif unit == "IOPS":
        text = f"{v / 1000:.1f}k IOPS"
    elif unit == "s":
        text = f"{v:.2f} s"
    else:
        text = f"{v:,.0f} {unit}"
    return text if m["ok"] else f"FAILED ({text})"


def fmt_ratio(r, mine=None, other=None, other_name=""):
    if mine and not mine["ok"]:
        return "ferry failed"
    if r is None:
        return "—"
    return f"{r:.2f}×" + (f" ({other_name} failed)" if other and not other["ok"] else "")


def failures(res, limit=None):
    out = []
    for s in SYSTEMS:
        m = res.get(s)
        if m and not m["ok"]:
            errs = m["errors"] or ["no result"]
            out.append(f"{s}: " + "; ".join(errs if limit is None else errs[:limit]))
    return out


def rows(report, workloads):
    for w in workloads:
        res = report["results"].get(w.key)
        if res is None:
            continue
        title = report["machine"]["workloads"][w.key]
        yield w, title, res


# ---------------------------------------------------------------- tables

HEADER = ["workload", "local", "ferry", "sshfs", "ferry vs sshfs", "ferry vs local", "target", "target met",
          "failures"]


def table_cells(report, workloads, plain):
    out = []
    for w, title, res in rows(report, workloads):
        fails = failures(res, limit=2)
        if plain:
            fails = [f.split(":")[0] for f in fails]
        out.append([title, fmt_value(res.get("local")), fmt_value(res.get("ferry")), fmt_value(res.get("sshfs")),
                    fmt_ratio(ratio(w, res.get("ferry"), res.get("sshfs")), res.get("ferry"), res.get("sshfs"),
                              "sshfs"),
                    fmt_ratio(ratio(w, res.get("ferry"), res.get("local")), res.get("ferry"), res.get("local"),
                              "local"),
                    target_text(w), verdict(w, res), "; ".join(fails) or "none"])
    return out


def cpu_rows(report):
    out = []
    for key, what in (("seq_write", "sequential write"), ("seq_read", "sequential read")):
        res = report["results"].get(key)
        if not res:
            continue
        f, s = (res.get("ferry") or {}).get("cpu") or {}, (res.get("sshfs") or {}).get("cpu") or {}

        def sec(d, k):
            return "—" if d.get(k) is None else f"{d[k]:.2f} s"

        tot = f"{f['server'] + f['client']:.2f} s" if f.get("server") is not None and f.get("client") is not None \
            else "—"
        mib = report["config"]["big_mib"]
        out.append([f"{what} {mib // 1024} GiB" if mib % 1024 == 0 else f"{what} {mib} MiB", sec(f, "server"), sec(f, "client"), tot,
                    sec(s, "server"), sec(s, "client")])
    return out


CPU_HEADER = ["CPU (user+sys)", "ferry server", "ferry client (mount)", "ferry total",
              "sshfs server (sshd+sftp-server)", "sshfs client (sshfs+ssh)"]


TLS_HEADER = ["what TLS costs", "ferry (TLS + token, default)", "ferry --insecure", "TLS ÷ insecure",
              "CPU (server+client), TLS", "CPU, insecure"]


def tls_rows(report, workloads):
    """ferry with TLS and authentication against ferry --insecure, where both ran."""
    out = []
    for w, title, res in rows(report, workloads):
        secure, plain = res.get("ferry"), res.get("ferry-insecure")
        if not secure or not plain:
            continue
        r = ratio(w, secure, plain)

        def cpu(m):
            c = (m or {}).get("cpu") or {}
            if c.get("server") is None or c.get("client") is None:
                return "—"
            return f"{c['server'] + c['client']:.2f} s"

        out.append([title, fmt_value(secure), fmt_value(plain), "—" if r is None else f"{r:.2f}×",
                    cpu(secure), cpu(plain)])
    return out


def combine(reports, workloads):
    """One report from several full runs: each system's median measurement per workload (by value; a
    failed or missing one counts as the worst), and under "runs" each run's ratios, so that a target can
    be judged on the median of the per-run ratios as well as on the ratio of the medians."""
    last = reports[-1]
    out = json.loads(json.dumps(last))
    by_key = {w.key: w for w in workloads}
    results, runs = {}, {}
    for key, last_res in last["results"].items():
        w = by_key.get(key)
        row = {}
        for system in last_res:
            found = [r["results"][key][system] for r in reports if system in r["results"].get(key, {})]
            worst_first = sorted(found, key=lambda m: (m.get("value") is not None,
                                                       (m.get("value") or 0) * (1 if w is None or w.higher_better
                                                                                else -1)))
            row[system] = worst_first[len(worst_first) // 2]
        results[key] = row
        if w is not None:
            per_run = [r["results"].get(key, {}) for r in reports]
            runs[key] = {
                "sshfs": [ratio(w, res.get("ferry"), res.get("sshfs")) for res in per_run],
                "local": [ratio(w, res.get("ferry"), res.get("local")) for res in per_run],
                "insecure": [ratio(w, res.get("ferry"), res.get("ferry-insecure")) for res in per_run],
            }
    out["results"], out["runs"] = results, runs
    m = out["machine"]
    m["date"], m["load_start"] = reports[0]["machine"]["date"], reports[0]["machine"]["load_start"]
    times = ", ".join(r["machine"]["date"][11:16] for r in reports)
    m["note"] = (f"medians of {len(reports)} full runs in a row ({times} UTC), each system's median per "
                 "workload; per-run ratios below the tables" + (f"; {m['note']}" if m.get("note") else ""))
    return out


def median_of(xs):
    """The median of the figures in `xs` that exist (None when none does)."""
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


RUNS_HEADER = ["ferry ÷", "workload", "each run", "median"]


def runs_rows(report, workloads):
    """Each run's ratios of a combined report (see `combine`), per workload and reference."""
    out = []
    runs = report.get("runs") or {}
    for other, name in (("sshfs", "sshfs"), ("local", "local"), ("insecure", "ferry --insecure")):
        for w, title, _ in rows(report, workloads):
            ratios = (runs.get(w.key) or {}).get(other) or []
            if not any(r is not None for r in ratios):
                continue
            med = median_of(ratios)
            out.append([name, title, ", ".join("—" if r is None else f"{r:.2f}×" for r in ratios),
                        "—" if med is None else f"{med:.2f}×"])
    return out


def print_table(report, workloads):
    cells = table_cells(report, workloads, plain=True)
    for header, body in ((HEADER, cells), (CPU_HEADER, cpu_rows(report)),
                         (TLS_HEADER, tls_rows(report, workloads)), (RUNS_HEADER, runs_rows(report, workloads))):
        if not body:
            continue
        widths = [max(len(str(r[i])) for r in [header] + body) for i in range(len(header))]
        for r in [header, ["-" * n for n in widths]] + body:
            print("  ".join(str(c).ljust(n) for c, n in zip(r, widths)).rstrip())
        print()
    for w, title, res in rows(report, workloads):
        for f in failures(res):
            print(f"FAILED  {title} — {f}")


def caption(report):
    m, c = report["machine"], report["config"]
    line = (f"{m['date'][:16].replace('T', ' ')} UTC · {m['nproc']} cores · {m['cpu']} · kernel {m['kernel']} · "
            f"{m['memory_gib']} GiB RAM · ferry {m['ferry_commit']}")
    load = f"load average {m['load_start'][0]:.1f} at start, {m.get('load_end', [0])[0]:.1f} at end"
    return line, load


def md_escape(text):
    return str(text).replace("|", "\\|")


def markdown(report, workloads):
    m, c = report["machine"], report["config"]
    line, load = caption(report)
    out = [f"Benchmark run of {line}; {load}." + (f" Note: {m['note']}." if m.get("note") else ""), ""]
    if m.get("quick"):
        out += ["**Quick run** (smaller files and tree): for development, not for comparison.", ""]
    out.append("Ratios are oriented so that above 1 means ferry is better (more per second, or less time).")
    out.append("")
    out.append("| " + " | ".join(HEADER) + " |")
    out.append("|" + "---|" * len(HEADER))
    for r in table_cells(report, workloads, plain=False):
        out.append("| " + " | ".join(md_escape(x) for x in r) + " |")
    cpu = cpu_rows(report)
    if cpu:
        out += ["", "| " + " | ".join(CPU_HEADER) + " |", "|" + "---|" * len(CPU_HEADER)]
        out += ["| " + " | ".join(r) + " |" for r in cpu]
    tls = tls_rows(report, workloads)
    if tls:
        out += ["", "| " + " | ".join(TLS_HEADER) + " |", "|" + "---|" * len(TLS_HEADER)]
        out += ["| " + " | ".join(md_escape(x) for x in r) + " |" for r in tls]
    per_run = runs_rows(report, workloads)
    if per_run:
        out += ["", "Each run's ratios (the tables above are of each system's median):", "",
                "| " + " | ".join(RUNS_HEADER) + " |", "|" + "---|" * len(RUNS_HEADER)]
        out += ["| " + " | ".join(md_escape(x) for x in r) + " |" for r in per_run]
    out += ["", "Systems:", ""]
    out += [f"- {name}: `{md_escape(d)}`" for name, d in m.get("systems", {}).items()]
    out += ["", f"Sizes: big file {c['big_mib']} MiB, tree {c['tree']} ({c.get('tree_entries', '?')} entries), "
                f"{c['files']} files, fio {c['fio_seconds']} s per job, timeout {c['timeout']} s per workload. "
                f"{m['sshfs'].strip()}; {m['fio']}.", ""]
    return "\n".join(out)


# ---------------------------------------------------------------- chart

SHORT = {
    "seq_write": "sequential write", "seq_read": "sequential read", "rand_qd1": "random 4k read QD1",
    "rand_qd16": "random 4k read QD16", "untar": "untar tree", "ls_lr": "ls -lR tree",
    "tar_md5": "tar c | md5sum", "create": "create files", "ls_l": "ls -l of the files", "rm": "rm -rf tree",
    "parallel_read": "4 parallel readers", "git_first": "git status (first)", "git_again": "git status (again)",
}
COLOURS = {"ferry": "#1f6fb4", "sshfs": "#e08a1e", "met": "#2e9e4f", "missed": "#d0453b", "none": "#8c8c8c"}


def _text(x, y, s, size=12, anchor="start", weight="normal", fill="#222"):
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}">{escape(str(s))}</text>')


def write_svg(report, workloads, path):
    data = list(rows(report, workloads))
    row_h, top, label_w = 38, 92, 170
    ax = (label_w + 20, label_w + 400)          # ferry ÷ sshfs panel, log scale
    bx = (ax[1] + 70, ax[1] + 70 + 330)         # relative to local panel, linear
    width = bx[1] + 90
    height = top + row_h * len(data) + 70
    ratios = [ratio(w, r.get("ferry"), r.get("sshfs")) for w, _, r in data]
    hi = max([2.0] + [x for x in ratios if x] + [w.target or 0 for w, _, _ in data]) * 1.3
    lo = min([0.5] + [x for x in ratios if x]) / 1.3
    lo_l, hi_l = math.log10(lo), math.log10(hi)

    def xa(v):
        return ax[0] + (math.log10(v) - lo_l) / (hi_l - lo_l) * (ax[1] - ax[0])

    rel = [ratio(w, r.get(s), r.get("local")) for w, _, r in data for s in ("ferry", "sshfs")]
    top_b = min(3.0, max([1.2] + [x * 1.05 for x in rel if x]))

    def xb(v):
        return bx[0] + min(v, top_b) / top_b * (bx[1] - bx[0])

    line, load = caption(report)
    m = report["machine"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           _text(12, 22, "ferry vs sshfs vs a local directory" + (" (quick run)" if m.get("quick") else ""),
                 16, weight="bold"),
           _text(12, 40, line, 11, fill="#444"),
           _text(12, 55, load + (f" · {m['note']}" if m.get("note") else ""), 11, fill="#444"),
           _text((ax[0] + ax[1]) / 2, top - 18, "ferry ÷ sshfs (× better; log scale; | = target)", 12, "middle",
                 "bold"),
           _text((bx[0] + bx[1]) / 2, top - 18, "speed relative to local = 1 (longer is better; | = target)", 12, "middle",
                 "bold")]
    bottom = top + row_h * len(data)
    for t in (0.1, 0.2, 0.5, 1, 2, 3, 5, 10, 20, 50, 100):
        if lo <= t <= hi:
            x = xa(t)
            out.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{bottom}" '
                       f'stroke="{"#555" if t == 1 else "#ddd"}" stroke-width="1"/>')
            out.append(_text(x, bottom + 14, f"{t:g}×", 10, "middle", fill="#555"))
    for i in range(0, int(top_b * 4) + 1):
        t = i / 4
        x = xb(t)
        out.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{bottom}" '
                   f'stroke="{"#555" if t == 1 else "#eee"}" stroke-width="1"/>')
        if i % 2 == 0:
            out.append(_text(x, bottom + 14, f"{t:g}", 10, "middle", fill="#555"))
    for i, (w, title, res) in enumerate(data):
        y = top + i * row_h
        if i % 2:
            out.append(f'<rect x="4" y="{y}" width="{width - 8}" height="{row_h}" fill="#f6f6f6"/>')
        out.append(_text(label_w, y + row_h / 2 + 4, SHORT.get(w.key, w.key), 12, "end"))
        r = ratios[i]
        v = verdict(w, res)
        f = res.get("ferry")
        colour = COLOURS["none"] if v == "—" else COLOURS["met"] if v == "met" else COLOURS["missed"]
        if f and not f["ok"]:
            out.append(_text(xa(1) + 4, y + row_h / 2 + 4, "ferry FAILED", 12, weight="bold",
                             fill=COLOURS["missed"]))
        elif r is not None:
            x0, x1 = sorted((xa(1), xa(r)))
            out.append(f'<rect x="{x0:.1f}" y="{y + 11}" width="{max(x1 - x0, 1):.1f}" height="16" '
                       f'fill="{colour}"/>')
            label = f"{r:.2f}×" + ("" if (res.get("sshfs") or {}).get("ok", True) else " (sshfs failed)")
            right = max(x1, xa(w.target) if w.target else x1) + 5
            out.append(_text(right, y + row_h / 2 + 4, label, 11))
        else:
            out.append(_text(xa(1) + 4, y + row_h / 2 + 4, "no sshfs figure", 11, fill="#777"))
        if w.target:
            x = xa(w.target)
            out.append(f'<line x1="{x:.1f}" y1="{y + 6}" x2="{x:.1f}" y2="{y + row_h - 6}" stroke="#111" '
                       f'stroke-width="2.5"/>')
        if w.local_target:
            x = xb(w.local_target)
            out.append(f'<line x1="{x:.1f}" y1="{y + 4}" x2="{x:.1f}" y2="{y + 19}" stroke="#111" '
                       f'stroke-width="2.5"/>')
        for j, s in enumerate(("ferry", "sshfs")):
            yy = y + 6 + j * 13
            ms = res.get(s)
            rr = ratio(w, ms, res.get("local"))
            if rr is None:
                out.append(_text(bx[0] + 4, yy + 10, f"{s}: no figure", 10, fill="#777"))
                continue
            out.append(f'<rect x="{bx[0]}" y="{yy}" width="{max(xb(rr) - bx[0], 1):.1f}" height="11" '
                       f'fill="{COLOURS[s]}"/>')
            label = f"{rr:.2f}" + ("" if ms["ok"] else " FAILED")
            out.append(_text(xb(rr) + 4, yy + 10, label, 10, weight="normal" if ms["ok"] else "bold",
                             fill="#222" if ms["ok"] else COLOURS["missed"]))
    ly = bottom + 36
    legend = [("met", "target met"), ("missed", "target not met"), ("none", "no target"),
              ("ferry", "ferry"), ("sshfs", "sshfs")]
    x = 12
    for key, label in legend:
        out.append(f'<rect x="{x}" y="{ly - 10}" width="12" height="12" fill="{COLOURS[key]}"/>')
        out.append(_text(x + 16, ly, label, 11))
        x += 30 + 7 * len(label)
    out.append(_text(x + 10, ly, "FAILED = non-zero exit, error output or a wrong result; it never counts as fast.",
                     11, fill="#444"))
    out.append(_text(12, ly + 18, "Ratios from one run; see bench/results.md for the figures.", 11, fill="#444"))
    out.append("</svg>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
