"""Unit tests of the benchmark's judgement: ratios, failures, verdicts, output.

Run: python3 -m unittest discover -s bench   (no root, no mounts needed)
"""

import os
import re
import tempfile
import unittest
import xml.etree.ElementTree as ET

import report
from workloads import WORKLOADS, Run, dd_bytes, ls_entries

BY_KEY = {w.key: w for w in WORKLOADS}


def m(value, unit, ok=True, errors=None):
    return {"value": value, "unit": unit, "seconds": 1.0, "ok": ok,
            "errors": errors if errors is not None else ([] if ok else ["exit status 2"]), "detail": {},
            "cpu": None}


def sample_report(results):
    return {
        "machine": {"date": "2026-11-26T15:00:00+00:00", "nproc": 2, "cpu": "Test CPU", "kernel": "6.1",
                    "memory_gib": 8.0, "load_start": [1.0, 1.0, 1.0], "load_end": [2.0, 2.0, 2.0],
                    "ferry_commit": "abc1234", "sshfs": "SSHFS version 3.7.3", "fio": "fio-3.33", "note": "",
                    "quick": False, "systems": {"sshfs": "sshfs a|b"},
                    "workloads": {k: BY_KEY[k].title for k in results}},
        "config": {"big_mib": 1024, "par_mib": 256, "tree": "/usr/include", "tree_entries": 10, "files": 10000,
                   "fio_seconds": 10, "timeout": 300, "systems": ["local", "ferry", "sshfs"]},
        "results": results,
    }


class Ratios(unittest.TestCase):
    def test_throughput_ratio_above_one_when_ferry_moves_more(self):
        w = BY_KEY["seq_read"]
        self.assertAlmostEqual(report.ratio(w, m(600, "MB/s"), m(200, "MB/s")), 3.0)

    def test_time_ratio_above_one_when_ferry_takes_less(self):
        w = BY_KEY["tar_md5"]
        self.assertAlmostEqual(report.ratio(w, m(2.0, "s"), m(6.0, "s")), 3.0)
        self.assertAlmostEqual(report.ratio(w, m(6.0, "s"), m(2.0, "s")), 1 / 3)

    def test_no_ratio_without_a_figure(self):
        self.assertIsNone(report.ratio(BY_KEY["seq_read"], m(None, "MB/s", ok=False), m(200, "MB/s")))
        self.assertIsNone(report.ratio(BY_KEY["seq_read"], m(200, "MB/s"), None))


class Verdicts(unittest.TestCase):
    def test_met_and_not_met(self):
        w = BY_KEY["seq_read"]  # target 5 × sshfs
        self.assertEqual(report.verdict(w, {"ferry": m(1000, "MB/s"), "sshfs": m(200, "MB/s")}), "met")
        self.assertEqual(report.verdict(w, {"ferry": m(999, "MB/s"), "sshfs": m(200, "MB/s")}), "NOT MET")

    def test_a_failed_ferry_never_counts_as_fast(self):
        w = BY_KEY["untar"]
        res = {"ferry": m(100000, "entries/s", ok=False), "sshfs": m(10, "entries/s")}
        self.assertEqual(report.verdict(w, res), "NOT MET (ferry failed)")
        self.assertEqual(report.fmt_ratio(report.ratio(w, res["ferry"], res["sshfs"]), res["ferry"]), "ferry failed")
        self.assertTrue(report.fmt_value(res["ferry"]).startswith("FAILED"))

    def test_write_needs_both_targets(self):
        w = BY_KEY["seq_write"]  # ≥ 2 × sshfs and ≥ 0.8 × local
        res = {"local": m(400, "MB/s"), "ferry": m(300, "MB/s"), "sshfs": m(100, "MB/s")}
        self.assertEqual(report.verdict(w, res), "NOT MET")
        res["ferry"] = m(320, "MB/s")
        self.assertEqual(report.verdict(w, res), "met")

    def test_no_sshfs_figure_is_not_a_pass(self):
        w = BY_KEY["create"]
        res = {"ferry": m(5000, "files/s"), "sshfs": m(None, "files/s", ok=False)}
        self.assertTrue(report.verdict(w, res).startswith("n/a"))

    def test_extra_workloads_have_no_target(self):
        self.assertEqual(report.verdict(BY_KEY["git_again"], {"ferry": m(1, "s"), "sshfs": m(2, "s")}), "—")


class Output(unittest.TestCase):
    def setUp(self):
        self.rep = sample_report({
            "seq_read": {"local": m(2000, "MB/s"), "ferry": m(1000, "MB/s"), "sshfs": m(200, "MB/s")},
            "untar": {"local": m(17000, "entries/s"), "ferry": m(2000, "entries/s", ok=False,
                                                                  errors=["error output: tar: x|y"]),
                      "sshfs": m(400, "entries/s")},
        })

    def test_markdown_marks_failures_and_escapes_pipes(self):
        md = report.markdown(self.rep, WORKLOADS)
        row = next(l for l in md.splitlines() if l.startswith("| untar"))
        self.assertIn("FAILED (2,000 entries/s)", row)
        self.assertIn("NOT MET (ferry failed)", row)
        self.assertIn("tar: x\\|y", row)
        self.assertEqual(len(re.findall(r"(?<!\\)\|", row)), len(report.HEADER) + 1)
        self.assertIn("| sequential read 1 GiB", md.replace("{big}", "1 GiB"))

    def test_svg_is_well_formed_and_shows_the_failure(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "r.svg")
            report.write_svg(self.rep, WORKLOADS, path)
            root = ET.parse(path).getroot()
        texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
        self.assertIn("ferry FAILED", texts)
        self.assertIn("5.00×", texts)
        self.assertTrue(any("Test CPU" in t and "2 cores" in t and "kernel 6.1" in t for t in texts))


class TlsCost(unittest.TestCase):
    def test_ferry_is_set_against_ferry_insecure_where_both_ran(self):
        rep = sample_report({
            "seq_read": {"local": m(500, "MB/s"), "ferry": m(900, "MB/s"), "ferry-insecure": m(1000, "MB/s"),
                         "sshfs": m(200, "MB/s")},
            "untar": {"local": m(9000, "entries/s"), "ferry": m(1000, "entries/s"), "sshfs": m(300, "entries/s")},
        })
        rows = report.tls_rows(rep, WORKLOADS)
        self.assertEqual(len(rows), 1)
        self.assertEqual(rows[0][3], "0.90×")
        md = report.markdown(rep, WORKLOADS)
        self.assertIn("| what TLS costs |", md)
        self.assertIn("0.90×", md)


class SeveralRuns(unittest.TestCase):
    def run_of(self, date, ferry_read, sshfs_read, ferry_tar_s, sshfs_tar_s, insecure_read):
        r = sample_report({
            "seq_read": {"local": m(900, "MB/s"), "ferry": m(ferry_read, "MB/s"), "sshfs": m(sshfs_read, "MB/s"),
                         "ferry-insecure": m(insecure_read, "MB/s")},
            "tar_md5": {"local": m(1.0, "s"), "ferry": m(ferry_tar_s, "s"), "sshfs": m(sshfs_tar_s, "s")},
        })
        r["machine"]["date"] = date
        return r

    def test_medians_per_system_and_each_runs_ratios(self):
        runs = [self.run_of("2026-11-28T17:02:00+00:00", 1000, 225, 2.0, 4.0, 1132),
                self.run_of("2026-11-28T17:06:00+00:00", 1115, 220, 3.0, 4.2, 1225),
                self.run_of("2026-11-28T17:09:00+00:00", 1114, 232, 2.5, 4.1, 1097)]
        c = report.combine(runs, WORKLOADS)
        self.assertEqual(c["results"]["seq_read"]["ferry"]["value"], 1114)
        self.assertEqual(c["results"]["seq_read"]["sshfs"]["value"], 225)
        # Times: the median time, not the median "speed" of a lower-is-better figure.
        self.assertEqual(c["results"]["tar_md5"]["ferry"]["value"], 2.5)
        per_run = c["runs"]["seq_read"]["sshfs"]
        self.assertAlmostEqual(per_run[0], 1000 / 225)
        self.assertAlmostEqual(report.median_of(per_run), 1114 / 232)
        self.assertAlmostEqual(report.median_of(c["runs"]["tar_md5"]["sshfs"]), 4.1 / 2.5)
        self.assertAlmostEqual(report.median_of(c["runs"]["seq_read"]["insecure"]), 1115 / 1225)
        self.assertEqual(c["machine"]["date"], "2026-11-28T17:02:00+00:00")
        self.assertIn("medians of 3 full runs", c["machine"]["note"])
        md = report.markdown(c, WORKLOADS)
        self.assertIn("| sshfs | sequential read {big} (dd bs=1M, caches dropped) | 4.44×, 5.07×, 4.80× | 4.80× |", md)

    def test_a_failed_run_is_the_worst_and_its_ratio_is_missing(self):
        runs = [self.run_of("2026-11-28T17:02:00+00:00", 1000, 225, 2.0, 4.0, 1132) for _ in range(3)]
        runs[1]["results"]["seq_read"]["ferry"] = m(None, "MB/s", ok=False)
        c = report.combine(runs, WORKLOADS)
        self.assertTrue(c["results"]["seq_read"]["ferry"]["ok"], "the median of two good runs and a failure")
        self.assertIsNone(c["runs"]["seq_read"]["sshfs"][1])
        self.assertIsNone(report.median_of([None, None]))
        self.assertEqual(report.median_of([3.0, None, 1.0, 2.0]), 2.0)


class Checks(unittest.TestCase):
    def test_problems(self):
        self.assertEqual(Run(0, "", "", 1.0, False).problems(), [])
        self.assertEqual(Run(2, "", "", 1.0, False).problems(), ["exit status 2"])
        self.assertEqual(Run(0, "", "", 300.0, True).problems(), ["timed out after 300 s"])
        err = "1024+0 records in\n1024+0 records out\n1073741824 bytes (1.1 GB, 1.0 GiB) copied, 5 s, 215 MB/s\n"
        self.assertEqual(Run(0, "", err, 1.0, False).problems(ignore=re.compile(
            r"records (in|out)$|bytes .* copied|^\d+ bytes")), [])
        self.assertEqual(dd_bytes(err), 1073741824)
        warn = Run(0, "", "tar: a: Cannot utime: No such file or directory\n", 1.0, False).problems()
        self.assertEqual(len(warn), 1)
        self.assertIn("Cannot utime", warn[0])

    def test_ls_entries_skips_headers_and_counts_unreadable_as_missing(self):
        text = (b"/t:\ntotal 8\ndrwxr-xr-x 2 root root 4096 Jan 1 00:00 d\n"
                b"lrwxrwxrwx 1 root root 3 Jan 1 00:00 l -> x\nl????????? ? ? ? ? ? bad\n\n"
                b"/t/d:\ntotal 0\n-rw-r--r-- 1 root root 0 Jan 1 00:00 f\n")
        with tempfile.NamedTemporaryFile() as f:
            f.write(text)
            f.flush()
            self.assertEqual(ls_entries(f.name), 3)


if __name__ == "__main__":
    unittest.main()
