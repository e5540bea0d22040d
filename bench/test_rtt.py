"""Unit tests of the round-trip-time run: argument parsing, the plan, ratios (with sshfs timed
out), verdicts at and above 10 ms, FERRY_STATS parsing, and the Markdown and SVG output.

Run: python3 -m unittest discover -s bench   (no root, no mounts needed)
"""

import os
import re
import tempfile
import unittest
import xml.etree.ElementTree as ET

import rtt
import rtt_report
from bench import sum_stats
from systems import parse_ferry_stats
from workloads import Measurement

BY_KEY = {w.key: w for w in rtt.RTT_WORKLOADS}


def m(value, unit, ok=True, errors=None, seconds=1.0, timed_out=False, requests=None):
    out = {"value": value, "unit": unit, "seconds": seconds, "ok": ok, "timed_out": timed_out,
           "errors": errors if errors is not None else ([] if ok else ["exit status 2"]), "detail": {},
           "cpu": None}
    if requests:
        out["detail"]["ferry_requests"] = requests
    return out


def sample(rtts=(1.0, 10.0, 50.0)):
    """A report of a --rtt run: untar (entries/s), tar_md5 (seconds) and the sequential pair."""
    def untar(f, s):
        return {"ferry": m(f, "entries/s", requests={"sent": {"create": 700, "mkdir": 90}, "waited": None,
                                                     "mounts": 1}),
                "sshfs": m(s, "entries/s")}

    def seq(f, s):
        return {"ferry": m(f, "MB/s"), "sshfs": m(s, "MB/s")}

    rep = {
        "kind": "rtt",
        "machine": {"date": "2026-11-28T09:00:00+00:00", "nproc": 2, "cpu": "Test CPU", "kernel": "6.1",
                    "memory_gib": 8.0, "load_start": [1.0, 1.0, 1.0], "load_end": [2.0, 2.0, 2.0],
                    "ferry_commit": "abc1234", "sshfs": "SSHFS version 3.7.3", "fio": "fio-3.33", "note": "",
                    "quick": False, "seconds": 1500, "proxy": "ferry-delay-proxy 0.1.0",
                    "systems": {"sshfs": "sshfs a|b"},
                    "workloads": {"untar": "untar /usr/include/linux (792 entries)",
                                  "tar_md5": "tar c | md5sum of the tree", "seq_write": "sequential write 256 MiB",
                                  "seq_read": "sequential read 256 MiB"}},
        "config": {"big_mib": 256, "par_mib": 64, "tree": "/usr/include/linux", "tree_entries": 792,
                   "files": 1000, "fio_seconds": 10, "timeout": 600, "systems": ["local", "ferry", "sshfs"],
                   "rtts": list(rtts)},
        "direct": {"seq_write": {"local": m(800, "MB/s"), "ferry": m(600, "MB/s"), "sshfs": m(100, "MB/s")},
                   "seq_read": {"local": m(900, "MB/s"), "ferry": m(1000, "MB/s"), "sshfs": m(100, "MB/s")}},
        "rtt": {
            "0": {"seq_write": seq(500, 90), "seq_read": seq(900, 95)},
            "1": {"untar": dict(untar(300, 100), local=m(8000, "entries/s")),
                  "tar_md5": {"local": m(0.2, "s"), "ferry": m(2.0, "s"), "sshfs": m(4.0, "s")},
                  "seq_write": seq(450, 80), "seq_read": seq(700, 60)},
            "10": {"untar": untar(120, 10),
                   "tar_md5": {"ferry": m(20.0, "s", seconds=20.0), "sshfs": m(30.0, "s", seconds=30.0)},
                   "seq_write": seq(300, 60), "seq_read": seq(200, 20)},
            "50": {"untar": {"ferry": m(30, "entries/s", seconds=26.4),
                             "sshfs": m(None, "entries/s", ok=False, timed_out=True, seconds=600.0,
                                        errors=["timed out after 600 s"])},
                   "tar_md5": {"ferry": m(None, "s", ok=False, errors=["exit status 2"]),
                               "sshfs": m(150.0, "s", seconds=150.0)},
                   "seq_write": seq(100, 30), "seq_read": seq(50, 5)},
        },
    }
    return rep


class Parsing(unittest.TestCase):
    def test_rtt_list(self):
        self.assertEqual(rtt.parse_rtts("50,1,10"), [1.0, 10.0, 50.0])
        self.assertEqual(rtt.parse_rtts(" 10 , 10,0.5"), [0.5, 10.0])
        self.assertEqual(rtt.parse_rtts("0"), [0.0])
        for bad, why in (("ten", "not a number"), ("-1", "0 to 2000"), ("", "no round-trip"), ("5000", "2000")):
            with self.assertRaises(ValueError) as e:
                rtt.parse_rtts(bad)
            self.assertIn(why, str(e.exception))

    def test_keys(self):
        self.assertEqual([rtt.rtt_key(v) for v in (0.0, 0.5, 10.0)], ["0", "0.5", "10"])

    def test_plan_checks_the_proxy_first_and_skips_the_sequential_pair_at_0(self):
        keys = rtt.RTT_KEYS
        plan = rtt.plan([1.0, 10.0, 50.0], keys)
        self.assertEqual([p for p, _ in plan], ["check", "1", "10", "50"])
        self.assertEqual(plan[0][1], ["seq_write", "seq_read"])
        self.assertEqual(plan[2][1], keys)
        plan = rtt.plan([0.0, 10.0], keys)
        self.assertEqual(plan[1], ("0", [k for k in keys if k not in rtt.SEQ_KEYS]))
        self.assertEqual([p for p, _ in rtt.plan([10.0], ["untar"])], ["10"])

    def test_median_keeps_every_figure(self):
        ms = [Measurement(v, "MB/s", 1.0) for v in (300, 100, 200)] + [Measurement(None, "MB/s", 1.0, ["x"])]
        pick = rtt.median(ms)
        self.assertEqual(pick.value, 200)
        self.assertEqual(pick.detail["runs"], [300, 100, 200, None])
        failed = [Measurement(None, "MB/s", 1.0, ["a"]), Measurement(None, "MB/s", 1.0, ["b"])]
        self.assertEqual(rtt.median(failed).errors, ["b"])


class FerryStats(unittest.TestCase):
    SENT = "ferry: requests sent to the server: create 7931, mkdir 820, lookup 408, write 3\n"

    def test_only_the_sent_line(self):
        text = "ferry: mounted 127.0.0.1:1 at /m — Ctrl-C\n" + self.SENT
        self.assertEqual(parse_ferry_stats(text),
                         {"sent": {"create": 7931, "mkdir": 820, "lookup": 408, "write": 3}, "waited": None})

    def test_both_lines(self):
        text = self.SENT + "ferry: requests waited for: create 12, lookup 408\n"
        got = parse_ferry_stats(text)
        self.assertEqual(got["waited"], {"create": 12, "lookup": 408})
        self.assertEqual(sum(got["sent"].values()), 9162)

    def test_empty_lists_and_no_lines(self):
        self.assertEqual(parse_ferry_stats("ferry: requests sent to the server: \nferry: requests waited for: "),
                         {"sent": {}, "waited": {}})
        self.assertEqual(parse_ferry_stats("ferry: mounted\n"), {"sent": None, "waited": None})

    def test_two_mounts_add_up(self):
        got = parse_ferry_stats(self.SENT + self.SENT)
        self.assertEqual(got["sent"]["create"], 2 * 7931)
        total = sum_stats([parse_ferry_stats(self.SENT),
                           parse_ferry_stats("ferry: requests sent to the server: create 1\n"
                                             "ferry: requests waited for: create 1\n")])
        self.assertEqual(total, {"sent": {"create": 7932, "mkdir": 820, "lookup": 408, "write": 3},
                                 "waited": {"create": 1}, "mounts": 2})

    def test_totals_in_the_report(self):
        self.assertEqual(rtt_report.requests(m(1, "s", requests={"sent": {"a": 2, "b": 3}, "waited": {"a": 1}})),
                         (5, 1))
        self.assertEqual(rtt_report.requests(m(1, "s", requests={"sent": {"a": 2}, "waited": None})), (2, None))
        self.assertEqual(rtt_report.requests(m(1, "s")), (None, None))


class Judgement(unittest.TestCase):
    def setUp(self):
        self.rep = sample()

    def test_ratio_oriented_and_bounded_by_a_timeout(self):
        r, bound = rtt_report.rtt_ratio(BY_KEY["untar"], rtt_report.result(self.rep, "10", "untar"))
        self.assertAlmostEqual(r, 12.0)
        self.assertFalse(bound)
        r, bound = rtt_report.rtt_ratio(BY_KEY["tar_md5"], rtt_report.result(self.rep, "10", "tar_md5"))
        self.assertAlmostEqual(r, 1.5)  # seconds: less is better
        r, bound = rtt_report.rtt_ratio(BY_KEY["untar"], rtt_report.result(self.rep, "50", "untar"))
        self.assertTrue(bound)
        self.assertAlmostEqual(r, 600 / 26.4)
        self.assertEqual(rtt_report.fmt_ratio(r, bound, rtt_report.result(self.rep, "50", "untar")),
                         "> 22.73× (sshfs timed out)")

    def test_verdicts_at_10_ms(self):
        self.assertEqual(rtt_report.verdict(BY_KEY["untar"], "10", self.rep), "met")       # 12 ≥ 10
        self.assertEqual(rtt_report.verdict(BY_KEY["tar_md5"], "10", self.rep), "NOT MET")  # 1.5 < 3
        self.assertEqual(rtt_report.verdict(BY_KEY["seq_write"], "10", self.rep), "met")    # 300/500 ≥ 0.5
        self.assertEqual(rtt_report.verdict(BY_KEY["seq_read"], "10", self.rep), "NOT MET")  # 200/900
        self.assertEqual(rtt_report.verdict(BY_KEY["untar"], "1", self.rep), "—")

    def test_verdicts_above_10_ms(self):
        # untar: ≥ 22.7 (sshfs timed out) against 12 at 10 ms: not worse.
        self.assertEqual(rtt_report.verdict(BY_KEY["untar"], "50", self.rep), "met")
        self.assertEqual(rtt_report.verdict(BY_KEY["tar_md5"], "50", self.rep), "NOT MET (ferry failed)")
        # seq_read: 10× at 50 ms, 10× at 10 ms: not worse; seq_write 3.33× < 5×.
        self.assertEqual(rtt_report.verdict(BY_KEY["seq_read"], "50", self.rep), "met")
        self.assertEqual(rtt_report.verdict(BY_KEY["seq_write"], "50", self.rep), "NOT MET")
        self.assertIn("12.00×", rtt_report.target_text(BY_KEY["untar"], "50", self.rep))

    def test_a_timed_out_sshfs_below_the_target_is_not_a_pass(self):
        res = rtt_report.result(self.rep, "10", "untar")
        res["sshfs"] = m(None, "entries/s", ok=False, timed_out=True, seconds=600.0)
        res["ferry"]["seconds"] = 100.0  # at least 6×: below 10×, but not known to be below
        self.rep["rtt"]["10"]["untar"] = res
        self.assertEqual(rtt_report.verdict(BY_KEY["untar"], "10", self.rep), "n/a (sshfs timed out)")

    def test_fractions_of_0_ms_and_the_proxy_cost(self):
        self.assertAlmostEqual(rtt_report.fraction_of_zero(self.rep, "seq_write", "ferry", "10"), 0.6)
        self.assertAlmostEqual(rtt_report.proxy_keep(self.rep, "seq_write"), 500 / 600)
        self.assertAlmostEqual(rtt_report.proxy_keep(self.rep, "seq_read"), 0.9)
        line = rtt_report.proxy_line(self.rep)
        self.assertIn("0.83 of its direct sequential write (met)", line)

    def test_local_is_measured_once_and_shown_at_every_rtt(self):
        self.assertEqual(rtt_report.with_local(self.rep, "50", "untar")["local"]["value"], 8000)
        self.assertEqual(rtt_report.with_local(self.rep, "10", "seq_read")["local"]["value"], 900)


class Output(unittest.TestCase):
    def setUp(self):
        self.rep = sample()

    def test_markdown(self):
        md = rtt_report.markdown(self.rep)
        self.assertIn("the run took 25 min 00 s", md)
        summary = next(l for l in md.splitlines() if l.startswith("| untar |"))
        self.assertEqual(summary, "| untar | 3.00× | 12.00× | > 22.73× (sshfs timed out) | ≥ 10 × sshfs | met | met |")
        row = next(l for l in md.splitlines() if l.startswith("| untar /usr/include/linux") and "120 entries" in l)
        self.assertIn("| 790 | — |", row)  # requests sent; waited not reported by this ferry
        self.assertIn("8,000 entries/s", row)  # local, measured at 1 ms, shown at 10 ms
        seq = next(l for l in md.splitlines() if l.startswith("| seq_read | ferry"))
        self.assertIn("900 MB/s (0.90 of direct)", seq)
        self.assertIn("200 MB/s (0.22)", seq)
        self.assertIn("sent create 700, mkdir 90", md)
        for line in md.splitlines():
            if line.startswith("| sequential write"):
                self.assertEqual(len(re.findall(r"(?<!\\)\|", line)), len(rtt_report.PHASE_HEADER) + 1)
        self.assertIn("sshfs a\\|b", md)

    def test_markdown_without_10_ms_has_no_targets(self):
        rep = sample(rtts=(1.0,))
        md = rtt_report.markdown(rep)
        self.assertNotIn("met at 10 ms", md)

    def test_svg_is_well_formed(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "r.svg")
            rtt_report.write_svg(self.rep, path)
            root = ET.parse(path).getroot()
        ns = "{http://www.w3.org/2000/svg}"
        texts = [t.text for t in root.iter(ns + "text")]
        for label in ("1 ms", "10 ms", "50 ms", "untar tree", "✕"):
            self.assertIn(label, texts)
        self.assertTrue(any("Test CPU" in t and "2 cores" in t for t in texts))
        # One line per workload with two or more points, and a hollow point for sshfs's timeout.
        self.assertGreaterEqual(len(list(root.iter(ns + "polyline"))), 4)
        self.assertTrue(any(c.get("fill") == "white" for c in root.iter(ns + "circle")))


if __name__ == "__main__":
    unittest.main()
