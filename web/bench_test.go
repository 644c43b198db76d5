package web

import (
	"net/http"
	"slices"
	"testing"
	"time"
)

// BenchmarkPages renders every page but a query's result, signed in as
// the role that sees the most of it, on the test dataset (2,770
// patients, as the demo's); it reports each page's 95th percentile. The
// aim is under 100 ms (make bench-web).
func BenchmarkPages(b *testing.B) {
	x := newHub(b)
	id := x.approved(b, "t2d")
	pages := []struct{ who, path string }{
		{"", "/"}, {"", "/register"}, {"", "/sign-in"}, {"rosa", "/projects"}, {"rosa", "/projects/t2d"},
		{"rosa", "/projects/t2d/query"}, {"dina", "/requests"}, {"dina", "/requests/" + id}, {"rosa", "/requests/new"}, {"ada", "/admin/users"},
	}
	browsers := map[string]*browser{"": x.browser(b)}
	for _, who := range []string{"rosa", "dina", "ada"} {
		browsers[who] = x.signedIn(b, who)
	}
	for _, p := range pages {
		b.Run(p.path, func(b *testing.B) {
			br := browsers[p.who]
			br.t = b
			var times []time.Duration
			for b.Loop() {
				start := time.Now()
				if code, _ := br.get(p.path); code != http.StatusOK {
					b.Fatalf("%s: %d", p.path, code)
				}
				times = append(times, time.Since(start))
			}
			slices.Sort(times)
			b.ReportMetric(float64(times[len(times)*95/100].Microseconds())/1000, "p95-ms")
		})
	}
}
