"""A small client of the hub's HTTP API for notebooks.

Configuration comes from the environment, as for the `hub` command:
HUB_SERVER (default http://127.0.0.1:8080), HUB_TOKEN or HUB_TOKEN_FILE,
and HUB_PROJECT. Answers are plain dicts as the API returns them; `cells`
turns a measure into a pandas DataFrame.
"""

import os

import pandas as pd
import requests


class HubError(Exception):
    """An error the hub answered with: its message says what to do next."""

    def __init__(self, status, message):
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.message = message


class Hub:
    def __init__(self, server=None, token=None, project=None):
        self.server = (server or os.environ.get("HUB_SERVER", "http://127.0.0.1:8080")).rstrip("/")
        if token is None:
            token = os.environ.get("HUB_TOKEN")
        if token is None and os.environ.get("HUB_TOKEN_FILE"):
            with open(os.environ["HUB_TOKEN_FILE"]) as f:
                token = f.read().strip()
        if not token:
            raise HubError(0, "no token: set HUB_TOKEN or HUB_TOKEN_FILE (an admin prints one with `hub user add`)")
        self.project = project or os.environ.get("HUB_PROJECT")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method, path, body=None):
        r = self.session.request(method, self.server + path, json=body, timeout=600)
        if r.status_code != 200:
            try:
                message = r.json()["error"]
            except ValueError:
                message = r.text
            raise HubError(r.status_code, message)
        return r.json()

    def whoami(self):
        return self._call("GET", "/v1/whoami")

    def datasets(self):
        """The datasets as a table: name, latest version, tables and row counts."""
        rows = []
        for d in self._call("GET", "/v1/datasets"):
            for t, m in sorted(d["tables"].items()):
                rows.append({"dataset": d["name"], "version": d["latest"], "table": t, "rows": m["rows"]})
        return pd.DataFrame(rows)

    def dictionary(self, dataset, table=None):
        """The data dictionary of a dataset's latest version."""
        d = self._call("GET", f"/v1/datasets/{dataset}")
        rows = []
        for t, m in sorted(d["tables"].items()):
            if table and t != table:
                continue
            for c in m["schema"]:
                rows.append({"table": t, "column": c["name"], "type": c["type"], "description": c["description"]})
        return pd.DataFrame(rows)

    def query(self, q, project=None):
        """Asks a cohort question (a dict in the cohort language) and returns the answer.
        The project's budget is charged before the answer is released; asking the
        same question again returns the same answer at no cost."""
        return self._call("POST", f"/v1/projects/{project or self.project}/queries", q)

    def budget(self, project=None):
        return self._call("GET", f"/v1/projects/{project or self.project}/budget")

    def history(self, project=None):
        """The project's released queries: when, dataset version, ε spent, query hash."""
        h = self._call("GET", f"/v1/projects/{project or self.project}/queries")
        df = pd.DataFrame(h)
        if not df.empty:
            df["epsilon"] = df["epsilon_units"] * 1e-6
            df = df[["seq", "time", "dataset", "version", "epsilon", "query_sha256"]]
        return df


def cells(answer, measure=0):
    """One measure of an answer as a DataFrame: one row per cell, its keys as
    columns, then value, ci_low, ci_high and suppressed (value NaN when
    suppressed)."""
    m = answer["measures"][measure]
    if not m.get("cells"):
        return pd.DataFrame([{k: m.get(k) for k in ("value", "ci_low", "ci_high", "suppressed")}])
    rows = []
    for c in m["cells"]:
        row = dict(c["key"])
        for k in ("value", "ci_low", "ci_high"):
            row[k] = c.get(k)
        row["suppressed"] = c.get("suppressed", False)
        rows.append(row)
    return pd.DataFrame(rows)
