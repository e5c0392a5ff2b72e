#!/usr/bin/env python3
"""Prints the per-class, per-split clip counts of a built benchmark (or of any folder with the project's
manifests and tasks.csv) as Markdown tables, for docs/corpus.md. Reads only; writes nothing.

usage: scripts/benchmark/counts_table.py BUILD_DIR [TITLE]
"""
import collections
import csv
import os
import sys


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    root = sys.argv[1]
    title = sys.argv[2] if len(sys.argv) > 2 else os.path.basename(os.path.normpath(root))
    tasks_csv = os.path.join(root, "tasks.csv")
    if not os.path.isfile(tasks_csv):
        sys.exit("no tasks.csv in %s" % root)
    print("**%s**\n" % title)
    for t in csv.DictReader(open(tasks_csv, newline="", encoding="utf-8")):
        path = os.path.join(root, t["manifest"])
        counts = collections.defaultdict(collections.Counter)
        groups = collections.defaultdict(set)
        seconds = 0.0
        for r in csv.DictReader(open(path, newline="", encoding="utf-8")):
            for label in r["label"].split(";"):
                counts[label][r["split"]] += 1
                groups[label].add(r["group"])
        splits = sorted({s for c in counts.values() for s in c}, key=lambda s: ("train", "val", "test").index(s)
                        if s in ("train", "val", "test") else int(s) if s.isdigit() else 99)
        print("%s (%s, %s):\n" % (t["task"], t["type"], t["splits"]))
        print("| class | " + " | ".join(splits) + " | clips | groups |")
        print("| --- | " + " | ".join("---:" for _ in splits) + " | ---: | ---: |")
        for label in sorted(counts):
            c = counts[label]
            print("| %s | %s | %d | %d |" % (label, " | ".join(str(c[s]) for s in splits), sum(c.values()),
                                            len(groups[label])))
        print()


if __name__ == "__main__":
    main()
