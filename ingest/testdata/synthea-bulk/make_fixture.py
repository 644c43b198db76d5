#!/usr/bin/env python3
"""Rebuild the Synthea bulk-export test fixture in this folder.

Source: the `10-patients` branch of github.com/smart-on-fhir/sample-bulk-fhir-datasets,
read from a bare git mirror (default: the one the search tool's `fetch` produced) or
from a plain directory of the export files (e.g. the unzipped branch archive).

What it does, and nothing more:
  * copies every export file of the branch, keeping its original name and bytes,
    gzip-compressed deterministically (mtime 0, no embedded name) as <name>.gz;
  * in Patient*.ndjson only, appends one identifier to each Patient's top-level
    `identifier` array:  {"system":"https://fhir.nhs.uk/Id/nhs-number","value":"<10 digits>"}
    The text is inserted in place (no re-serialisation), so every other byte of the
    line is unchanged.  NHS numbers: Modulus 11, starting at 9990000018 and stepping
    the 9-digit stem forward, skipping stems whose check digit would be 10.
    Patients are numbered in file order (the files are sorted by resource id);
  * verifies the change (removing the inserted text gives the original line back
    byte for byte, and the parsed resource equals the original with one identifier
    appended, key order included);
  * writes expected.json: the counts a test can assert.

Files that the source lacks (the fetched snapshot omits blobs of 4 MiB or more: on
10-patients that is Observation.000.ndjson and DiagnosticReport.000.ndjson) are
skipped and listed in expected.json under source.missing_files.  Point --src-dir at a
complete copy of the branch to produce the full fixture with the same script.

Usage:
  python3 make_fixture.py [--git-dir DIR] [--branch 10-patients] [--src-dir DIR] [--out DIR]
"""
import argparse
import collections
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys

DEFAULT_GIT = "/work/.mirror/smart-on-fhir+sample-bulk-fhir-datasets/repo"
REPO = "smart-on-fhir/sample-bulk-fhir-datasets"
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
NHS_START = 9990000018


# ---------------------------------------------------------------- NHS numbers
def nhs_check_digit(stem9):
    """Modulus 11 check digit for a 9-digit stem, or None if it would be 10."""
    total = sum(int(d) * w for d, w in zip(stem9, range(10, 1, -1)))
    check = 11 - (total % 11)
    if check == 11:
        return 0
    if check == 10:
        return None
    return check


def nhs_valid(n):
    s = str(n)
    if len(s) != 10 or not s.isdigit() or len(set(s)) == 1:
        return False
    c = nhs_check_digit(s[:9])
    return c is not None and c == int(s[9])


def nhs_sequence(start=NHS_START):
    """Yield valid NHS numbers >= start, in increasing order."""
    stem = int(str(start)[:9])
    while True:
        s = "%09d" % stem
        c = nhs_check_digit(s)
        if c is not None:
            n = int(s + str(c))
            if n >= start and nhs_valid(n):
                yield s + str(c)
        stem += 1


# ---------------------------------------------------------------- source access
class GitSource:
    def __init__(self, git_dir, branch):
        self.git_dir, self.branch = git_dir, branch
        self.commit = self._git("rev-parse", branch).decode().strip()

    def _git(self, *args):
        return subprocess.run(["git", "-C", self.git_dir] + list(args),
                              check=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE).stdout

    def names(self):
        out = self._git("ls-tree", "--name-only", self.commit).decode()
        return sorted(n for n in out.splitlines() if n.endswith(".ndjson"))

    def read(self, name):
        try:
            return self._git("show", "%s:%s" % (self.commit, name))
        except subprocess.CalledProcessError:
            return None  # blob absent from the snapshot


class DirSource:
    def __init__(self, path):
        self.path, self.commit, self.branch = path, None, None

    def names(self):
        return sorted(n for n in os.listdir(self.path) if n.endswith(".ndjson"))

    def read(self, name):
        with open(os.path.join(self.path, name), "rb") as f:
            return f.read()


# ---------------------------------------------------------------- Patient edit
def add_nhs_identifier(line, nhs):
    """Insert the NHS identifier at the end of the top-level identifier array.

    Works on the text so formatting/key order/number spelling stay untouched."""
    d = json.loads(line)
    ident = d["identifier"]
    ser = json.dumps(ident, separators=(",", ":"), ensure_ascii=False)
    needle = '"identifier":' + ser
    if line.count(needle) != 1:
        raise SystemExit("cannot locate identifier array uniquely in Patient/%s" % d["id"])
    new_item = json.dumps({"system": NHS_SYSTEM, "value": nhs}, separators=(",", ":"))
    insert = "," + new_item
    pos = line.index(needle) + len(needle) - 1  # position of the closing ']'
    new_line = line[:pos] + insert + line[pos:]
    # verification 1: removing the inserted text gives the original line back
    assert new_line[:pos] + new_line[pos + len(insert):] == line
    # verification 2: parsed (ordered) equals original with one identifier appended
    op = lambda pairs: list(pairs)  # keep key order, compare as pair lists
    before = json.loads(line, object_pairs_hook=op)
    after = json.loads(new_line, object_pairs_hook=op)
    exp = [(k, (v + [[("system", NHS_SYSTEM), ("value", nhs)]]) if k == "identifier" else v)
           for k, v in before]
    assert after == exp, "unexpected difference in Patient/%s" % d["id"]
    return new_line


# ---------------------------------------------------------------- expected counts
NEGATED_RULES = {
    # resourceType: list of (field, set of codes) -- any match means "did not happen / wrong"
    "Condition": [("verificationStatus", {"refuted", "entered-in-error"}),
                  ("clinicalStatus", {"irrelevant"})],  # 'irrelevant' is not an R4 code; kept per brief
    "AllergyIntolerance": [("verificationStatus", {"refuted", "entered-in-error"})],
    "Observation": [("status", {"cancelled", "entered-in-error"})],
    "DiagnosticReport": [("status", {"cancelled", "entered-in-error"})],
    "MedicationRequest": [("status", {"cancelled", "entered-in-error"})],
    "Procedure": [("status", {"not-done", "entered-in-error"})],
    "Immunization": [("status", {"not-done", "entered-in-error"})],
    "Encounter": [("status", {"cancelled", "entered-in-error"})],
    "DocumentReference": [("status", {"entered-in-error"})],
    "Device": [("status", {"entered-in-error"})],
}


def codes_of(res, field):
    v = res.get(field)
    if isinstance(v, str):
        return [v]
    if isinstance(v, dict):
        return [c.get("code") for c in v.get("coding", [])]
    return []


def patient_ref_of(res):
    for k in ("subject", "patient"):
        r = res.get(k)
        if isinstance(r, dict) and isinstance(r.get("reference"), str):
            return r["reference"]
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--git-dir", default=DEFAULT_GIT)
    ap.add_argument("--branch", default="10-patients")
    ap.add_argument("--src-dir", help="directory holding the export files instead of git")
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    a = ap.parse_args()

    src = DirSource(a.src_dir) if a.src_dir else GitSource(a.git_dir, a.branch)
    os.makedirs(a.out, exist_ok=True)
    nhs_gen = nhs_sequence()

    files, missing = {}, []
    by_type = collections.defaultdict(list)
    nhs_map = []
    for name in src.names():
        data = src.read(name)
        if data is None:
            missing.append(name)
            print("WARNING: %s is absent from the source snapshot; skipped" % name, file=sys.stderr)
            continue
        orig_sha = hashlib.sha256(data).hexdigest()
        rtype = name.split(".")[0]
        if rtype == "Patient":
            text = data.decode("utf-8")
            assert text.endswith("\n")
            out_lines = []
            for line in text[:-1].split("\n"):
                pid = json.loads(line)["id"]
                nhs = next(nhs_gen)
                out_lines.append(add_nhs_identifier(line, nhs))
                nhs_map.append({"id": pid, "nhs_number": nhs})
            data = ("\n".join(out_lines) + "\n").encode("utf-8")
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
            gz.write(data)
        with open(os.path.join(a.out, name + ".gz"), "wb") as f:
            f.write(buf.getvalue())
        lines = data.decode("utf-8").split("\n")[:-1]
        files[name + ".gz"] = {
            "original_name": name,
            "lines": len(lines),
            "uncompressed_bytes": len(data),
            "gzip_bytes": len(buf.getvalue()),
            "sha256_uncompressed": hashlib.sha256(data).hexdigest(),
            "sha256_original_source": orig_sha,
            "modified": rtype == "Patient",
            "max_line_bytes": max(len(l.encode("utf-8")) for l in lines) if lines else 0,
        }
        if rtype != "log":
            by_type[rtype].extend(json.loads(l) for l in lines)

    # ---- expected counts
    exp = collections.OrderedDict()
    exp["source"] = {"repository": "https://github.com/" + REPO, "branch": src.branch,
                     "commit": src.commit, "missing_files": missing}
    exp["files"] = files
    exp["total_gzip_bytes"] = sum(f["gzip_bytes"] for f in files.values())
    exp["total_uncompressed_bytes"] = sum(f["uncompressed_bytes"] for f in files.values())
    exp["resource_counts"] = {t: len(v) for t, v in sorted(by_type.items())}
    exp["resource_counts_total"] = sum(exp["resource_counts"].values())
    exp["log_lines"] = sum(f["lines"] for n, f in files.items() if n.startswith("log."))

    status = {}
    for t, rs in sorted(by_type.items()):
        fields = collections.OrderedDict()
        for fld in ("status", "clinicalStatus", "verificationStatus", "intent"):
            c = collections.Counter(code for r in rs for code in codes_of(r, fld))
            if c:
                fields[fld] = dict(sorted(c.items()))
        if fields:
            status[t] = fields
    exp["status_counts"] = status

    neg = {}
    for t, rules in NEGATED_RULES.items():
        rs = by_type.get(t, [])
        n = sum(1 for r in rs if any(set(codes_of(r, f)) & codes for f, codes in rules))
        neg[t] = {"present": t in by_type, "count": n,
                  "rule": " OR ".join("%s in {%s}" % (f, ",".join(sorted(c))) for f, c in rules)}
    exp["negated"] = neg
    exp["negated_total"] = sum(v["count"] for v in neg.values())
    exp["medicationrequest_status_stopped_not_counted_as_negated"] = sum(
        1 for r in by_type.get("MedicationRequest", []) if r.get("status") == "stopped")
    exp["documentreference_status_superseded_not_counted_as_negated"] = sum(
        1 for r in by_type.get("DocumentReference", []) if r.get("status") == "superseded")

    obs = by_type.get("Observation", [])
    comp = [len(o.get("component", [])) for o in obs]
    vk = collections.Counter(k for o in obs for k in o if k.startswith("value"))
    exp["observation"] = {
        "present": "Observation" in by_type,
        "lines": len(obs),
        "with_component": sum(1 for c in comp if c),
        "component_total": sum(comp),
        "component_count_histogram": {str(k): v for k, v in sorted(collections.Counter(comp).items())},
        "value_kinds": dict(sorted(vk.items())),
        "with_neither_value_nor_component": sum(
            1 for o in obs if not any(k.startswith("value") for k in o) and not o.get("component")),
    }

    per_patient = collections.defaultdict(collections.Counter)
    for t, rs in by_type.items():
        for r in rs:
            ref = patient_ref_of(r)
            if ref:
                per_patient[ref.split("/", 1)[1]][t] += 1
    deceased = {p["id"] for p in by_type.get("Patient", []) if any(k.startswith("deceased") for k in p)}
    for m in nhs_map:
        m["deceased"] = m["id"] in deceased
        m["resource_counts"] = dict(sorted(per_patient[m["id"]].items()))
    exp["patients"] = nhs_map
    exp["deceased_patients"] = len(deceased)
    exp["nhs_number_rule"] = ("system %s; Modulus 11 (weights 10..2 over first 9 digits, "
                              "check = 11 - sum%%11, 11->0, 10 -> stem skipped); sequence from %d"
                              % (NHS_SYSTEM, NHS_START))

    with open(os.path.join(a.out, "expected.json"), "w") as f:
        json.dump(exp, f, indent=2)
        f.write("\n")
    print("wrote %d files (%d bytes gzipped, %d uncompressed); missing: %s"
          % (len(files), exp["total_gzip_bytes"], exp["total_uncompressed_bytes"], missing or "none"))


if __name__ == "__main__":
    main()
