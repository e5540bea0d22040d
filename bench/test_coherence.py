"""Unit tests of the coherence mode's arithmetic and report (no root, no mounts).

Run: python3 -m unittest discover -s bench
"""

import os
import tempfile
import unittest

import coherence


def vis(p50, p99, missed=0):
    row = {"p50": p50, "p99": p99, "max": p99, "samples": 100, "missed": missed}
    return {k: dict(row) for k in coherence.KINDS + ("all",)}


def sample(mount=(1.0, 5.0), server=(2.0, 20.0), git=(0.03, 0.05), requests=(0, 0), missed=0):
    return {
        "machine": {"date": "2026-11-28T10:00:00+00:00", "nproc": 2, "cpu": "Test CPU", "kernel": "6.1",
                    "memory_gib": 8.0, "load_start": [1.0], "load_end": [2.0], "ferry_commit": "abc",
                    "note": "shared machine"},
        "config": {"runs": 3, "samples": 100, "repeats": 5, "tree": "/usr/include", "tree_entries": 8758},
        "combined": {
            "visibility": {"mount": vis(*mount, missed=missed), "server": vis(*server)},
            "git": {"local": {"median": git[0], "errors": []}, "ferry": {"median": git[1], "errors": []}},
            "ls": {"local": {"median": 0.1, "errors": [], "requests": None},
                   "ferry": {"median": 0.2, "errors": [], "requests": list(requests)}},
        },
        "errors": [],
    }


class Arithmetic(unittest.TestCase):
    def test_percentiles_are_nearest_rank(self):
        values = list(range(1, 101))
        self.assertEqual(coherence.percentile(values, 0.5), 50)
        self.assertEqual(coherence.percentile(values, 0.99), 99)
        self.assertEqual(coherence.percentile([7], 0.99), 7)
        self.assertIsNone(coherence.percentile([], 0.5))

    def test_summaries_pool_every_kind_and_count_what_was_never_seen(self):
        results = {k: {"ms": [1.0, 2.0, 3.0], "missed": 0} for k in coherence.KINDS}
        results["chmod"]["missed"] = 2
        s = coherence.summarize(results)
        self.assertEqual(s["all"]["samples"], 15)
        self.assertEqual(s["all"]["missed"], 2)
        self.assertEqual(s["create"]["p50"], 2.0)

    def test_medians_over_runs(self):
        runs = []
        for p50 in (1.0, 9.0, 2.0):
            runs.append({"visibility": {"mount": vis(p50, 10.0), "server": vis(p50, 10.0)},
                         "git": {"ferry": {"median": p50, "errors": []}},
                         "ls": {"ferry": {"median": p50, "errors": [], "requests": [0, 0]}}})
        c = coherence.combine(runs)
        self.assertEqual(c["visibility"]["mount"]["all"]["p50"], 2.0)
        self.assertEqual(c["git"]["ferry"]["median"], 2.0)
        self.assertEqual(c["ls"]["ferry"]["requests"], [0] * 6)

    def test_statistics_lines_are_parsed(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "ferry-mount.log"), "w") as f:
                f.write("ferry: mounted\nferry: requests sent to the server so far: open 3, stat 10, subscribe 1\n"
                        "ferry: requests waited for so far: open 3\n"
                        "ferry: requests sent to the server: open 5, stat 10, subscribe 1\n")

            class Procs:
                log_dir = d

            lines = coherence.sent_counts(Procs, "ferry-mount")
        self.assertEqual(lines, [{"open": 3, "stat": 10, "subscribe": 1}, {"open": 5, "stat": 10, "subscribe": 1}])
        self.assertEqual(coherence.difference(lines[1], lines[0]), {"open": 2})


class Report(unittest.TestCase):
    def test_targets_met(self):
        text = coherence.markdown(sample())
        self.assertIn("p99 ≤ 50 ms: met", text)
        self.assertIn("server → mount p99 ≤ 100 ms: met", text)
        self.assertIn("≥ 0.5 × local: met", text)
        self.assertIn("no request: met", text)
        self.assertIn("shared machine", text)

    def test_targets_missed(self):
        text = coherence.markdown(sample(mount=(20.0, 60.0), server=(50.0, 200.0), git=(0.03, 0.2),
                                         requests=(0, 4), missed=1))
        self.assertNotIn(": met", text)
        self.assertIn("0.15×", text)
        self.assertIn("Changes never seen within 10 s: 1", text)


if __name__ == "__main__":
    unittest.main()
