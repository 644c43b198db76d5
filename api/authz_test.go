package api

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
)

// authzRow is one row of docs/governance.md's endpoint table.
type authzRow struct {
	method, path string
	cells        []string // anonymous, member, other, dac, analyst, admin
}

// actors are the users behind the table's columns.
var actors = []string{"", "rosa", "sam", "dina", "ana", "ada"}

func readAuthzTable(t *testing.T) []authzRow {
	t.Helper()
	f, err := os.Open("../docs/governance.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var rows []authzRow
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "| method | path |") {
			cols := strings.Split(strings.Trim(line, "|"), "|")
			want := []string{"method", "path", "anonymous", "member", "other", "dac", "analyst", "admin"}
			for i, c := range cols {
				if strings.TrimSpace(c) != want[i] {
					t.Fatalf("table columns %v, want %v", cols, want)
				}
			}
			in = true
			continue
		}
		if !in || strings.HasPrefix(line, "| ---") {
			continue
		}
		if !strings.HasPrefix(line, "|") {
			break
		}
		var cells []string
		for _, c := range strings.Split(strings.Trim(line, "|"), "|") {
			cells = append(cells, strings.TrimSpace(c))
		}
		if len(cells) != 8 {
			t.Fatalf("row %q has %d cells", line, len(cells))
		}
		rows = append(rows, authzRow{method: cells[0], path: cells[1], cells: cells[2:]})
	}
	if len(rows) < 20 {
		t.Fatalf("read %d rows from the table", len(rows))
	}
	return rows
}

// TestAuthorizationMatrix checks every endpoint × every kind of caller
// against the table in docs/governance.md. Each row gets a fresh hub in
// which rosa's req-1 is approved (project "study"), req-2 is submitted
// and req-3 is a draft. An allowed call must succeed (200); a refused one
// must give the table's status, add a refusal to the audit log, and
// change nothing a later allowed call depends on.
func TestAuthorizationMatrix(t *testing.T) {
	paths := map[string]string{"{name}": "gp", "{project}": "study"}
	bodies := map[string]any{
		"POST /v1/requests":                   request("", 1),
		"POST /v1/requests/{id}/amend":        map[string]any{"epsilon": 3, "reason": "more questions"},
		"POST /v1/requests/{id}/approve":      map[string]any{"reason": "sound"},
		"POST /v1/requests/{id}/reject":       map[string]any{"reason": "no ethics approval"},
		"POST /v1/projects/{project}/queries": `{"dataset": "gp", "measures": [{"kind": "count"}], "epsilon": 0.5}`,
		"POST /v1/users":                      map[string]any{"name": "newcomer", "roles": []string{"researcher"}},
		"POST /v1/users/{name}/tokens":        map[string]any{},
		"POST /v1/users/{name}/revoke":        map[string]any{},
	}
	ids := map[string]string{ // which request each request action targets
		"GET /v1/requests/{id}": "req-1", "POST /v1/requests/{id}/submit": "req-3",
		"POST /v1/requests/{id}/withdraw": "req-2", "POST /v1/requests/{id}/amend": "req-1",
		"POST /v1/requests/{id}/review": "req-2", "POST /v1/requests/{id}/approve": "req-2",
		"POST /v1/requests/{id}/reject": "req-2",
	}
	for _, row := range readAuthzTable(t) {
		key := row.method + " " + row.path
		t.Run(key, func(t *testing.T) {
			x := newHub(t)
			x.approved(t, "study", 2)
			x.must(t, "rosa", "POST", "/v1/requests", request("second", 1))
			x.must(t, "rosa", "POST", "/v1/requests?draft=true", request("draft", 1))
			path := row.path
			for k, v := range paths {
				path = strings.ReplaceAll(path, k, v)
			}
			if strings.HasPrefix(path, "/v1/users/") {
				path = strings.ReplaceAll(path, "gp", "zed")
			}
			if id, ok := ids[key]; ok {
				path = strings.ReplaceAll(path, "{id}", id)
			} else if strings.Contains(path, "{") {
				t.Fatalf("no value for a parameter of %s: add one to the test", key)
			}
			for i, want := range row.cells {
				who := actors[i]
				before := x.refusals(t)
				code, out := x.call(t, who, row.method, path, bodies[key])
				if want == "✓" {
					if code != 200 {
						t.Errorf("%s as %q: %d %v, the table says allowed", key, who, code, out)
					}
					continue
				}
				status, err := strconv.Atoi(want)
				if err != nil {
					t.Fatalf("cell %q", want)
				}
				if code != status {
					t.Errorf("%s as %q: %d %v, the table says %d", key, who, code, out, status)
				}
				if msg, _ := out.(map[string]any)["error"].(string); msg == "" {
					t.Errorf("%s as %q: refusal without a message", key, who)
				}
				if after := x.refusals(t); after <= before {
					t.Errorf("%s as %q: the refusal is not in the audit log", key, who)
				}
			}
		})
	}
}
