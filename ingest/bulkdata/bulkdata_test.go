package bulkdata_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/nhs-hub/hub/ingest"
	"github.com/nhs-hub/hub/ingest/bulkdata"
	"github.com/nhs-hub/hub/internal/bulktest"
	"github.com/nhs-hub/hub/internal/synth"
)

// export writes a synthetic FHIR export in small parts.
func export(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := synth.Generate(t.Context(), dir, synth.Options{Patients: 300, Seed: 3, FaultRate: 0.02, Format: ingest.FHIR, PartRows: 400}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// ingestDir ingests a folder and returns its report as JSON, the file
// names and hashes left out (they differ between the two folders only by
// the pulled manifest's OperationOutcome file).
func ingestDir(t *testing.T, dir string, optouts string) (*ingest.Report, int64) {
	t.Helper()
	o, err := ingest.LoadOptOuts(t.Context(), strings.NewReader(optouts))
	if err != nil {
		t.Fatal(err)
	}
	var rows int64
	rep, err := ingest.Run(t.Context(), ingest.Dir(dir), ingest.Options{OptOuts: o}, func(_ context.Context, _ ingest.Table, rec arrow.RecordBatch) error {
		rows += rec.NumRows()
		rec.Release()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return rep, rows
}

func TestPullThenIngest(t *testing.T) {
	src := export(t)
	srv := bulktest.New(t, src)
	srv.Cut = "Encounter.000.ndjson" // dropped mid-file once: retried
	srv.Errors = []string{`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"Observation/o1: invalid"}]}`}
	landing := filepath.Join(t.TempDir(), "pull")
	var progress bytes.Buffer
	st, err := bulkdata.Pull(t.Context(), bulkdata.Config{Base: srv.Base(), Dir: landing, Poll: time.Millisecond, Progress: &progress,
		Types: []string{"Patient", "Encounter", "Condition", "MedicationRequest", "Medication", "Observation", "Procedure", "Immunization", "EpisodeOfCare"}})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Complete || st.TransactionTime != "2026-12-01T00:00:00Z" || srv.Kicks != 1 || !srv.Deleted["job-1"] {
		t.Errorf("state %+v, %d kick-offs, deleted %v", st, srv.Kicks, srv.Deleted)
	}
	if srv.Gets["Encounter.000.ndjson"] != 2 {
		t.Errorf("the cut file was fetched %d times, want 2", srv.Gets["Encounter.000.ndjson"])
	}
	if !strings.Contains(progress.String(), "% done") {
		t.Errorf("X-Progress not shown: %q", progress.String())
	}
	for _, f := range st.Files {
		b, err := os.ReadFile(filepath.Join(landing, f.Name))
		if err != nil || int64(len(b)) != f.Bytes || len(f.XXH3) != 32 {
			t.Errorf("%s: %d bytes on disk, %d recorded, %v", f.Name, len(b), f.Bytes, err)
		}
		if orig, err := os.ReadFile(filepath.Join(src, f.Name)); err == nil && !bytes.Equal(orig, b) {
			t.Errorf("%s differs from the server's file", f.Name)
		}
	}
	// The pulled folder ingests as the server's folder does.
	optouts, _ := os.ReadFile(filepath.Join(src, "optouts.txt"))
	a, arows := ingestDir(t, src, string(optouts))
	b, brows := ingestDir(t, landing, string(optouts))
	if arows != brows || arows == 0 {
		t.Errorf("rows kept: %d from the folder, %d from the pull", arows, brows)
	}
	for name, ta := range a.Tables {
		tb := b.Tables[name]
		if ta.Read != tb.Read || ta.Kept != tb.Kept || len(ta.Files) != len(tb.Files) {
			t.Errorf("%s: read %d/%d kept %d/%d files %d/%d", name, ta.Read, tb.Read, ta.Kept, tb.Kept, len(ta.Files), len(tb.Files))
		}
	}
	if !b.Manifest || b.NotIngested["OperationOutcome"] != 1 || b.ExportErrors["processing"] != 1 || len(b.ExportErrors) != 1 {
		t.Errorf("pulled folder: manifest %v, not ingested %v, export errors %v", b.Manifest, b.NotIngested, b.ExportErrors)
	}
	// A pull already complete is not asked again.
	if _, err := bulkdata.Pull(t.Context(), bulkdata.Config{Base: srv.Base(), Dir: landing, Types: []string{"Patient", "Encounter", "Condition", "MedicationRequest", "Medication", "Observation", "Procedure", "Immunization", "EpisodeOfCare"}}); err != nil || srv.Kicks != 1 {
		t.Errorf("a complete pull ran again: %v, %d kick-offs", err, srv.Kicks)
	}
}

// A Group's export is asked at [base]/Group/ID/$export.
func TestPullGroup(t *testing.T) {
	srv := bulktest.New(t, export(t))
	st, err := bulkdata.Pull(t.Context(), bulkdata.Config{Base: srv.Base() + "/Group/cohort-1", Dir: t.TempDir(), Poll: time.Millisecond})
	if err != nil || !st.Complete || !strings.Contains(st.Request, "/Group/cohort-1/$export") {
		t.Fatalf("group pull: %v, %+v", err, st)
	}
}

// A pull killed mid-download resumes its job and fetches only the files it
// does not have whole.
func TestPullResumes(t *testing.T) {
	src := export(t)
	srv := bulktest.New(t, src)
	srv.Hold, srv.HoldOn = make(chan struct{}), "Observation.001.ndjson"
	landing := filepath.Join(t.TempDir(), "pull")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() {
		_, err := bulkdata.Pull(ctx, bulkdata.Config{Base: srv.Base(), Dir: landing, Poll: time.Millisecond, Parallel: 1})
		done <- err
	}()
	// Wait until the held file is asked for, then kill the pull.
	for deadline := time.Now().Add(10 * time.Second); ; {
		srv.Mu.Lock()
		asked := srv.Gets["Observation.001.ndjson"] > 0
		srv.Mu.Unlock()
		if asked || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	srv.Mu.Lock()
	close(srv.Hold)
	srv.Mu.Unlock()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("killed pull: %v", err)
	}
	before := map[string]int{}
	srv.Mu.Lock()
	for k, v := range srv.Gets {
		before[k] = v
	}
	srv.Hold = nil
	srv.Mu.Unlock()
	st, err := bulkdata.Pull(t.Context(), bulkdata.Config{Base: srv.Base(), Dir: landing, Poll: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if srv.Kicks != 1 {
		t.Errorf("%d kick-offs: the resumed pull did not take up its job", srv.Kicks)
	}
	refetched := 0
	for name, n := range srv.Gets {
		if n > 1 {
			refetched++
			if name != "Observation.001.ndjson" {
				t.Errorf("%s fetched %d times, though it was whole", name, n)
			}
		}
	}
	if refetched != 1 || !st.Complete {
		t.Errorf("%d files fetched again (want the one cut), complete %v", refetched, st.Complete)
	}
	entries, _ := os.ReadDir(landing)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".part") {
			t.Errorf("a partial download was left: %s", e.Name())
		}
	}
}

func TestPullErrors(t *testing.T) {
	src := export(t)
	for _, c := range []struct {
		name  string
		types []string
		fail  int
		want  string
	}{
		{"unknown type", []string{"Nonsense"}, 0, "400 Bad Request: not-supported: _type Nonsense"},
		{"failed export", nil, 500, "gave up after retries"},
		{"lost job", nil, 404, "404 Not Found"},
		{"unknown group", nil, -1, "404 Not Found: not-found: no such Group"},
		{"missing file", nil, -2, "the server answered 404 Not Found: not-found: no such file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := bulktest.New(t, src)
			base := srv.Base()
			switch c.fail {
			case -1:
				base += "/Group/nobody"
			case -2:
				srv.Missing = "Encounter.001.ndjson"
			default:
				srv.Fail = c.fail
			}
			_, err := bulkdata.Pull(t.Context(), bulkdata.Config{Base: base, Dir: t.TempDir(), Types: c.types, Poll: time.Millisecond, Retries: 2})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
		})
	}
}

// An export streamed through ingest as it downloads gives the report that
// ingesting the server's folder gives, file hashes included, and lands
// every file whole: with a connection cut mid-file resumed by a Range
// request, with a server that ignores Range (the file is asked again and
// its first bytes checked), and with the files asked for ahead drained
// into the folder and read back.
func TestStreamThroughIngest(t *testing.T) {
	src := export(t)
	optouts, _ := os.ReadFile(filepath.Join(src, "optouts.txt"))
	want, wantRows := ingestDir(t, src, string(optouts))
	for _, c := range []struct {
		name           string
		noRange, drain bool
	}{{"range", false, false}, {"no range", true, false}, {"drained ahead", false, true}} {
		t.Run(c.name, func(t *testing.T) {
			bulkdata.ForceDrain(c.drain)
			defer bulkdata.ForceDrain(false)
			srv := bulktest.New(t, src)
			srv.Cut, srv.NoRange = "Encounter.001.ndjson", c.noRange
			landing := filepath.Join(t.TempDir(), "pull")
			ahead := 0
			if c.drain {
				ahead = 3
			}
			s, err := bulkdata.Start(t.Context(), bulkdata.Config{Base: srv.Base(), Dir: landing, Poll: time.Millisecond, Types: ingest.FHIRReadOrder(), Ahead: ahead})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			o, err := ingest.LoadOptOuts(t.Context(), strings.NewReader(string(optouts)))
			if err != nil {
				t.Fatal(err)
			}
			var rows int64
			got, err := ingest.Run(t.Context(), s, ingest.Options{OptOuts: o}, func(_ context.Context, _ ingest.Table, rec arrow.RecordBatch) error {
				rows += rec.NumRows()
				rec.Release()
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if rows != wantRows || got.Identity() != want.Identity() {
				t.Errorf("streamed: %d rows, identity %s; the folder: %d rows, identity %s", rows, got.Identity(), wantRows, want.Identity())
			}
			for name, tw := range want.Tables {
				if tg := got.Tables[name]; tg.Read != tw.Read || tg.Kept != tw.Kept || fmt.Sprint(tg.Reasons) != fmt.Sprint(tw.Reasons) {
					t.Errorf("%s: streamed read %d kept %d %v, the folder %d %d %v", name, tg.Read, tg.Kept, tg.Reasons, tw.Read, tw.Kept, tw.Reasons)
				}
			}
			st := s.State()
			if !st.Complete || !srv.Deleted["job-1"] {
				t.Errorf("complete %v, job deleted %v", st.Complete, srv.Deleted)
			}
			if srv.Gets["Encounter.001.ndjson"] != 2 || (!c.noRange && srv.Ranged == 0) {
				t.Errorf("the cut file was asked %d times, %d with a Range", srv.Gets["Encounter.001.ndjson"], srv.Ranged)
			}
			for _, f := range st.Files {
				b, err := os.ReadFile(filepath.Join(landing, f.Name))
				orig, _ := os.ReadFile(filepath.Join(src, f.Name))
				if err != nil || !bytes.Equal(b, orig) || int64(len(b)) != f.Bytes || len(f.XXH3) != 32 {
					t.Errorf("%s landed as %d bytes (recorded %d), equal to the server's: %v", f.Name, len(b), f.Bytes, bytes.Equal(b, orig))
				}
			}
			streamed, back := s.Streamed()
			if c.drain && back == 0 || !c.drain && streamed == 0 {
				t.Errorf("%d bytes streamed, %d read back", streamed, back)
			}
			entries, _ := os.ReadDir(landing)
			for _, e := range entries {
				if strings.HasSuffix(e.Name(), ".part") {
					t.Errorf("a partial file was left: %s", e.Name())
				}
			}
		})
	}
}

// A stream abandoned mid-ingest keeps the files it landed whole and
// removes the rest; the pull resumed fetches only the others.
func TestStreamAbandonedResumes(t *testing.T) {
	src := export(t)
	srv := bulktest.New(t, src)
	landing := filepath.Join(t.TempDir(), "pull")
	s, err := bulkdata.Start(t.Context(), bulkdata.Config{Base: srv.Base(), Dir: landing, Poll: time.Millisecond, Types: ingest.FHIRReadOrder()})
	if err != nil {
		t.Fatal(err)
	}
	names, _ := s.List(t.Context())
	var first string
	for _, n := range names {
		if strings.HasPrefix(n, "Observation.") {
			first = n
			break
		}
	}
	r, err := s.Open(t.Context(), first)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		t.Fatal(err)
	}
	r.Close()
	r, err = s.Open(t.Context(), "Patient.000.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Read(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	s.Close() // ingest failed: the pull is abandoned mid-file
	entries, _ := os.ReadDir(landing)
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".part") {
			t.Errorf("a partial file was left: %s", e.Name())
		}
	}
	if _, err := os.Stat(filepath.Join(landing, first)); err != nil {
		t.Fatalf("the file read whole was not kept: %v", err)
	}
	st, err := bulkdata.Pull(t.Context(), bulkdata.Config{Base: srv.Base(), Dir: landing, Poll: time.Millisecond, Types: ingest.FHIRReadOrder()})
	if err != nil || !st.Complete {
		t.Fatalf("resumed: %v", err)
	}
	if srv.Kicks != 1 || srv.Gets[first] != 1 {
		t.Errorf("%d kick-offs; %s fetched %d times", srv.Kicks, first, srv.Gets[first])
	}
}

// A reader that comes to a file while it drains ahead reads the blocks
// already handed on back from the part file and the rest as it arrives,
// byte for byte, and the file lands whole.
func TestStreamJoinsDownloadMidway(t *testing.T) {
	src := t.TempDir()
	big := make([]byte, 0, 5<<20+777)
	r := rand.New(rand.NewPCG(7, 7))
	for len(big) < cap(big)-200 {
		big = fmt.Appendf(big, `{"resourceType":"Patient","id":"%d"}`+"\n", r.Uint64())
	}
	os.WriteFile(filepath.Join(src, "Observation.000.ndjson"), []byte(`{"resourceType":"Observation","id":"o"}`+"\n"), 0o644)
	os.WriteFile(filepath.Join(src, "Patient.000.ndjson"), big, 0o644)
	bulkdata.ForceDrain(true)
	defer bulkdata.ForceDrain(false)
	srv := bulktest.New(t, src)
	srv.HoldOn, srv.Hold, srv.HoldHalf = "Patient.000.ndjson", make(chan struct{}), true
	landing := filepath.Join(t.TempDir(), "pull")
	s, err := bulkdata.Start(t.Context(), bulkdata.Config{Base: srv.Base(), Dir: landing, Poll: time.Millisecond, Types: ingest.FHIRReadOrder(), Ahead: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	obs, err := s.Open(t.Context(), "Observation.000.ndjson") // asks for Patient ahead
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, obs)
	obs.Close()
	part := filepath.Join(landing, "Patient.000.ndjson.part")
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if st, err := os.Stat(part); err == nil && st.Size() > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the file asked for ahead did not drain")
		}
	}
	pr, err := s.Open(t.Context(), "Patient.000.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	close(srv.Hold)
	got, err := io.ReadAll(pr)
	pr.Close()
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("read %d of %d bytes, equal %v: %v", len(got), len(big), bytes.Equal(got, big), err)
	}
	streamed, back := s.Streamed()
	if streamed == 0 || back == 0 {
		t.Errorf("%d bytes streamed and %d read back; want both", streamed, back)
	}
	if err := s.Finish(t.Context()); err != nil {
		t.Fatal(err)
	}
	landed, _ := os.ReadFile(filepath.Join(landing, "Patient.000.ndjson"))
	if !bytes.Equal(landed, big) {
		t.Errorf("landed %d bytes, equal %v", len(landed), bytes.Equal(landed, big))
	}
}
