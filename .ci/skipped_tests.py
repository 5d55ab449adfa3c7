#!/usr/bin/env python3
"""Skip accounting for CI: reads CTest's JUnit report (ctest --output-junit FILE) and lists
every test that did not run, with its labels and the reason GoogleTest printed
(GTEST_SKIP counts as skipped through SKIP_REGULAR_EXPRESSION, tests/CMakeLists.txt).

Usage: skipped_tests.py JUNIT.xml [--fail-on LABEL,LABEL]

Exit status: 0 when no test with a --fail-on label was skipped, 1 when one was (each is
named), 2 when the report cannot be read.
"""
import argparse
import sys
import xml.etree.ElementTree as ET


def reason(out):
    """The GTEST_SKIP message: the line after "<file>:<line>: Skipped", else the last line."""
    lines = [l.strip() for l in (out or "").splitlines() if l.strip()]
    for i, line in enumerate(lines):
        if line.endswith(": Skipped") and i + 1 < len(lines):
            return lines[i + 1]
    return lines[-1] if lines else ""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("junit")
    ap.add_argument("--fail-on", default="", help="comma-separated labels whose tests must not be skipped")
    args = ap.parse_args()
    fail_on = {l for l in args.fail_on.split(",") if l}
    try:
        cases = ET.parse(args.junit).getroot().iter("testcase")
    except (OSError, ET.ParseError) as e:
        print(f"[skips] cannot read {args.junit}: {e}")
        return 2
    counts = {}  # label -> [run, skipped, other]
    skipped = []
    for case in cases:
        labels = []
        for prop in case.iter("property"):
            if prop.get("name") == "cmake_labels":
                labels = [l for l in prop.get("value", "").split(";") if l]
        status = case.get("status")
        slot = 0 if status == "run" else 1 if case.find("skipped") is not None else 2
        for label in labels or ["(none)"]:
            counts.setdefault(label, [0, 0, 0])[slot] += 1
        if slot == 1:
            skipped.append((case.get("name"), labels, reason(case.findtext("system-out"))))
    for label in sorted(counts):
        run, skip, other = counts[label]
        print(f"[skips] {label:12s} {run:4d} ran, {skip:3d} skipped, {other:3d} failed or not run")
    bad = []
    for name, labels, why in skipped:
        must_run = sorted(fail_on.intersection(labels))
        print(f"[skips] skipped {name} ({','.join(labels)}): {why}" + ("  <- must run in CI" if must_run else ""))
        if must_run:
            bad.append(name)
    if bad:
        print(f"[skips] FAIL: {len(bad)} test(s) labelled {','.join(sorted(fail_on))} skipped")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
