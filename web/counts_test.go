package web

import (
	"encoding/json"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/internal/testlake"
)

// exactCounts are the test dataset's exact counts: every table's rows and
// every count of its ingest and de-identification reports (patients read,
// kept, opted out, quarantined by reason; generalised and suppressed by
// the k-anonymity check), those over 40 that rounding to 5 or 10 would
// change.
func exactCounts(t *testing.T, m *catalog.Manifest) map[int64]string {
	out := map[int64]string{}
	// Counts over 40: smaller ones meet the pages' own small numbers (an
	// audit trail's, a time's) too often to tell apart.
	add := func(n int64, what string) {
		if n > 40 && n%5 != 0 {
			out[n] = what
		}
	}
	for name, tb := range m.Tables {
		add(tb.Rows, name+" rows")
	}
	var walk func(at string, v any)
	walk = func(at string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				switch k {
				case "files", "quarantine_samples", "policy": // file sizes and lines, the policy's settings
					continue
				}
				walk(at+"."+k, x)
			}
		case []any:
			for _, x := range v {
				walk(at, x)
			}
		case float64:
			add(int64(v), at)
		}
	}
	for name, raw := range m.Reports {
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			t.Fatal(err)
		}
		walk(name, v)
	}
	// Numbers in the data dictionary (the pseudonyms' 16 bytes, the
	// 12 months) are its text, not counts.
	for _, tb := range m.Tables {
		js, _ := json.Marshal(tb.Schema)
		for _, n := range numbers(string(js)) {
			delete(out, n)
		}
	}
	if len(out) < 20 {
		t.Fatalf("only %d exact counts to look for: %v", len(out), out)
	}
	return out
}

var (
	reTag = regexp.MustCompile(`<[^>]*>`)
	// dates and times as the pages and the API write them: 2025-01-01,
	// 2025-01-01T10:00:00Z, 5 December 2026, 5 Dec 2026 06:33 UTC
	reDate = regexp.MustCompile(`\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2})?(\.\d+)?Z?)?|` +
		`\d{1,2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]* \d{4}|\d{1,2}:\d{2}(:\d{2})?`)
	reNumber = regexp.MustCompile(`\d[\d,]*`)
)

// numbers are the whole numbers a body shows, in its text (not its
// tags' attributes: icons' viewBoxes) and not in dates; "2,788" is 2788.
func numbers(body string) []int64 {
	body = reDate.ReplaceAllString(reTag.ReplaceAllString(body, " "), " ")
	var out []int64
	for _, m := range reNumber.FindAllStringIndex(body, -1) {
		// a number inside a word (a hash, a pseudonym) is not one
		if m[0] > 0 && isWord(body[m[0]-1]) || m[1] < len(body) && isWord(body[m[1]]) && body[m[1]] != ',' {
			continue
		}
		if n, err := strconv.ParseInt(strings.ReplaceAll(strings.TrimRight(body[m[0]:m[1]], ","), ",", ""), 10, 64); err == nil {
			out = append(out, n)
		}
	}
	return out
}

func isWord(c byte) bool {
	return c == '_' || c == '.' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// TestNoExactCounts walks every page and API answer a non-admin can
// read, signed out and as each role, and the HDR UK and DCAT exports
// that go to the outside world: none shows an exact count of the
// dataset's patients, rows, opt-outs or generalisations (outside a DP
// answer). An admin's view of the same is checked to show them, so that
// the search is known to find what it looks for.
func TestNoExactCounts(t *testing.T) {
	x := newHub(t)
	id := x.approved(t, "t2d")
	l := testlake.Lake(t)
	m, err := l.Manifest(t.Context(), "gp", 1)
	if err != nil {
		t.Fatal(err)
	}
	exact := exactCounts(t, m)
	pages := []string{"/", "/register", "/catalog", "/catalog/gp/1", "/projects", "/projects/t2d", "/projects/t2d/query",
		"/requests", "/requests/" + id, "/requests/new", "/admin/users"}
	apis := []string{"/v1/whoami", "/v1/datasets", "/v1/datasets/gp", "/v1/codelists", "/v1/requests", "/v1/requests/" + id,
		"/v1/projects/t2d/budget", "/v1/projects/t2d/queries", "/v1/audit", "/v1/users"}
	look := func(who, what, body string) (found int) {
		for _, n := range numbers(body) {
			if e, ok := exact[n]; ok {
				found++
				if who != "ada" {
					t.Errorf("%s as %q shows %d, the exact %s", what, who, n, e)
				}
			}
		}
		return found
	}
	read := 0
	for _, who := range []string{"", "rosa", "dina", "ana", "ada"} {
		b := x.browser(t)
		if who != "" {
			b = x.signedIn(t, who)
		}
		for _, p := range pages {
			if code, body := b.get(p); code == http.StatusOK {
				read++
				look(who, p, body)
			}
		}
		if who == "" {
			continue
		}
		for _, p := range apis {
			r, _ := http.NewRequest("GET", x.srv.URL+p, nil)
			r.Header.Set("Authorization", "Bearer "+x.tok[who])
			code, body, _ := b.do(r)
			if code == http.StatusOK {
				read++
				if n := look(who, p, body); who == "ada" && p == "/v1/datasets/gp" && n == 0 {
					t.Errorf("an admin's %s shows no exact count: the search finds nothing", p)
				}
			}
		}
	}
	if read < 50 {
		t.Errorf("only %d pages and answers read", read)
	}
	for _, f := range []struct{ format, version string }{{"hdruk", "4.0.0"}, {"hdruk", "2.1.2"}, {"dcat", ""}} {
		out, err := catalog.Export(m, f.format, catalog.ExportOptions{Publisher: "Test hub", BaseURL: "https://hub.example.nhs.uk",
			LakeURL: "s3://lake/hub", Contact: "dpo@example.nhs.uk", Licence: "https://hub.example.nhs.uk/terms", HDRUKVersion: f.version})
		if err != nil {
			t.Fatal(err)
		}
		look("the outside world", f.format+" "+f.version+" export", string(out))
	}
	// The DCAT export's part sizes: a patients part's size over 16 (its
	// pseudonyms' bytes) would be near the count.
	out, _ := catalog.Export(m, "dcat", catalog.ExportOptions{Publisher: "Test hub", BaseURL: "https://hub.example.nhs.uk",
		LakeURL: "s3://lake/hub", Contact: "dpo@example.nhs.uk", Licence: "https://hub.example.nhs.uk/terms"})
	if strings.Count(string(out), "dcat:byteSize") != len(m.Tables)-1 {
		t.Errorf("the DCAT export gives %d part sizes for %d tables; the patients part's should be left out", strings.Count(string(out), "dcat:byteSize"), len(m.Tables))
	}
}

func TestNumbers(t *testing.T) {
	got := numbers(`<svg viewBox="0 0 24 24"></svg><p>about 2,790 patients on 2025-01-01T10:00:00Z, hash ab2788cd, 1.5, 17 in all; 5 December 2026, 5 Dec 2026 06:33 UTC</p>`)
	if want := []int64{2790, 17}; len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("numbers: %v, want %v", got, want)
	}
}
