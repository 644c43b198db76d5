package api

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/catalog/file"
	"github.com/nhs-hub/hub/cohorts"
	"github.com/nhs-hub/hub/governance"
	"github.com/nhs-hub/hub/internal/testlake"
)

// The kill campaign's child reads its state folder, lake and tokens from
// the environment.
const (
	killState  = "HUB_KILL_STATE"
	killLake   = "HUB_KILL_LAKE"
	killTokens = "HUB_KILL_TOKENS"
)

// TestKillCampaign: a server process makes requests, reviews and charged
// queries in a loop, printing each acknowledgement (a 200 reply) as it is
// given, and is killed with SIGKILL at a random moment; 200 times (20 with
// -short). After each kill the chain verifies, every acknowledged request
// and review is in effect, and once the ledger is reopened every ε it
// charged is in the verified chain and the ledger agrees with the chain.
func TestKillCampaign(t *testing.T) {
	if os.Getenv(killState) != "" {
		killChild(t)
		return
	}
	runs := 200
	if testing.Short() {
		runs = 20
	}
	_, root := testlake.Shared(t)
	x := newHub(t)
	x.approved(t, "kill", 50)
	x.gov.Close()
	x.svc.Close()
	tokens, _ := json.Marshal(x.tok)
	rng := rand.New(rand.NewPCG(17, 4))
	var acks [4]int
	for run := range runs {
		state := t.TempDir()
		copyDir(t, x.state, state)
		cmd := exec.Command(os.Args[0], "-test.run=^TestKillCampaign$")
		cmd.Env = append(os.Environ(), killState+"="+state, killLake+"="+root, killTokens+"="+string(tokens))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1024)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
		}()
		if l := <-lines; l != "READY" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("run %d: the child said %q, not READY", run, l)
		}
		time.Sleep(time.Duration(rng.IntN(120)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		var got []string
		for l := range lines {
			got = append(got, l)
		}
		cmd.Wait()
		n := checkAfterKill(t, run, state, root, got)
		for i := range n {
			acks[i] += n[i]
		}
	}
	t.Logf("%d kills; acknowledged before them: %d requests, %d reviews, %d queries; %d charges recovered into the chain",
		runs, acks[0], acks[1], acks[2], acks[3])
	if acks[0] == 0 || acks[2] == 0 {
		t.Fatal("no run acknowledged anything before its kill: the campaign tested nothing")
	}
}

// checkAfterKill checks a killed child's state folder against what it
// acknowledged, and returns how many requests, reviews and queries it did
// and how many charges were recovered into the chain.
func checkAfterKill(t *testing.T, run int, state, root string, acked []string) [4]int {
	t.Helper()
	fail := func(format string, a ...any) {
		t.Helper()
		t.Fatalf("run %d: "+format, append([]any{run}, a...)...)
	}
	if _, err := governance.Verify(state, nil, nil); err != nil {
		fail("the chain does not verify: %v", err)
	}
	gov, err := governance.Open(state, governance.Options{})
	if err != nil {
		fail("open: %v", err)
	}
	defer gov.Close()
	host := governance.Host("test")
	var n [4]int
	var queries []string
	for _, l := range acked {
		kind, id, _ := strings.Cut(l, " ")
		switch kind {
		case "request":
			if _, err := gov.Request(host, id); err != nil {
				fail("acknowledged request %s is not there: %v", id, err)
			}
			n[0]++
		case "review":
			r, err := gov.Request(host, id)
			if err != nil || r.State != governance.InReview {
				fail("acknowledged review of %s is not in effect: %v %v", id, r, err)
			}
			n[1]++
		case "query":
			queries = append(queries, id)
			n[2]++
		default:
			fail("the child reported %q", l)
		}
	}
	svc := serviceOn(t, root, state, gov)
	defer svc.Close()
	b, err := svc.Budget("kill") // opens the ledger: recovers charges the kill kept out of the chain
	if err != nil {
		fail("budget: %v", err)
	}
	res, err := governance.Verify(state, nil, nil)
	if err != nil {
		fail("the chain does not verify after recovery: %v", err)
	}
	charges, err := cohorts.ReadLedger(filepath.Join(state, "ledger", "kill.jsonl"))
	if err != nil && len(queries) > 0 {
		fail("ledger: %v", err)
	}
	if err := res.CheckLedger("kill", charges); err != nil {
		fail("%v", err)
	}
	inLedger := map[string]bool{}
	for _, c := range charges {
		inLedger[c.QuerySHA256] = true
	}
	for _, q := range queries {
		if !inLedger[q] {
			fail("acknowledged query %.12s is not charged", q)
		}
	}
	if e, _ := gov.AuditedSpend("kill"); e != b.EpsilonSpentU {
		fail("the chain's charges %d units, the budget's %d", e, b.EpsilonSpentU)
	}
	recovered, err := gov.Audit(host, governance.AuditFilter{Actor: "hub:recovery"})
	if err != nil {
		t.Fatal(err)
	}
	n[3] = len(recovered)
	return n
}

// killChild serves the state folder in this process and acts in a loop
// until it is killed, printing each acknowledgement on stdout unbuffered.
func killChild(t *testing.T) {
	state, root := os.Getenv(killState), os.Getenv(killLake)
	var tok map[string]string
	if err := json.Unmarshal([]byte(os.Getenv(killTokens)), &tok); err != nil {
		t.Fatal(err)
	}
	gov, err := governance.Open(state, governance.Options{})
	if err != nil {
		t.Fatal(err)
	}
	svc := serviceOn(t, root, state, gov)
	if _, err := svc.Engine(t.Context(), "gp", 0); err != nil {
		t.Fatal(err)
	}
	h := Handler(gov, svc, nil)
	call := func(who, path, body string) map[string]any {
		r := httptest.NewRequest("POST", path, strings.NewReader(body))
		r.Header.Set("Authorization", "Bearer "+tok[who])
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != http.StatusOK {
			io.WriteString(os.Stdout, fmt.Sprintf("failed %s %d %q\n", path, w.Code, w.Body.String()))
			select {} // wait for the kill
		}
		var out map[string]any
		json.Unmarshal(w.Body.Bytes(), &out)
		return out
	}
	say := func(s string) { os.Stdout.Write([]byte(s + "\n")) }
	say("READY")
	for i := 0; ; i++ {
		body, _ := json.Marshal(request(fmt.Sprintf("p%d", i), 1))
		id := call("rosa", "/v1/requests", string(body))["id"].(string)
		say("request " + id)
		call("dina", "/v1/requests/"+id+"/review", "")
		say("review " + id)
		q := fmt.Sprintf(`{"dataset": "gp", "index_date": "2024-01-01", "criteria": {"age": {"min": 18}}, "measures": [{"kind": "count"}], "epsilon": %g}`, 0.001+float64(i)*1e-6)
		say("query " + call("rosa", "/v1/projects/kill/queries", q)["query_sha256"].(string))
	}
}

// serviceOn opens the cohort service over the lake folder root, with its
// ledgers in state.
func serviceOn(t *testing.T, root, state string, gov *governance.Store) *cohorts.Service {
	t.Helper()
	store, err := file.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := cohorts.New(cohorts.Config{Lake: catalog.NewLake(store), State: state, Projects: gov})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, path)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o700)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), data, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}
