package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/nhs-hub/hub/api"
)

// benchLoad is issue 17's load test: good clients asking a mix of new and
// repeated cohort queries for --duration, while --flooders clients, each
// from its own loopback address, send bad tokens as fast as they can. It
// reports the good clients' errors, the process's RSS growth after a
// warm-up, and what the flood added to the state folder.
func benchLoad(c *cli.Context, dir string) error {
	b, err := newBenchServer(c, dir)
	if err != nil {
		return err
	}
	defer b.close()
	clients, flooders, dur := c.Int("clients"), c.Int("flooders"), c.Duration("duration")
	w := c.App.Writer
	fmt.Fprintf(w, "load: %d good clients (mixed new and repeated queries) and %d flooders of bad tokens, %s after a %s warm-up\n",
		clients, flooders, dur, c.Duration("warmup"))

	var seq atomic.Int64
	query := func() []byte {
		i := seq.Add(1)
		bq := benchQueries[i%int64(len(benchQueries))]
		eps := 0.01 // every other request repeats an answer already released: free
		if i%2 == 0 {
			eps = 0.001 + float64(i/2)*1e-9 // a new query, charged: ε 0.001 each
		}
		return fmt.Appendf(nil, bq.text, eps)
	}
	type tally struct{ ok, failed, limited, refused atomic.Int64 }
	var good, flood tally
	var firstErr atomic.Value
	run := func(ctx context.Context, withFlood bool) {
		var wg sync.WaitGroup
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cl := b.client(nil)
				for ctx.Err() == nil {
					if _, _, err := cl.Query(ctx, "bench", query()); err != nil {
						if ctx.Err() != nil {
							return
						}
						good.failed.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
						continue
					}
					good.ok.Add(1)
				}
			}()
		}
		for i := range flooders {
			if !withFlood {
				break
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				cl := b.client(&net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i))})
				cl.Token = fmt.Sprintf("hub_%064x", i)
				for ctx.Err() == nil {
					err := cl.Do(ctx, "POST", "/v1/projects/bench/queries", []byte(`{}`), nil)
					var ae *api.APIError
					switch {
					case errors.As(err, &ae) && ae.Status == 429:
						flood.limited.Add(1)
					case errors.As(err, &ae) && ae.Status == 401:
						flood.refused.Add(1)
					case ctx.Err() == nil:
						flood.failed.Add(1)
					}
				}
			}()
		}
		wg.Wait()
	}
	warm, cancel := context.WithTimeout(c.Context, c.Duration("warmup"))
	run(warm, false)
	cancel()
	if n := good.failed.Load(); n > 0 {
		return fmt.Errorf("load: %d good requests failed during the warm-up, the first: %v", n, firstErr.Load())
	}
	warmRate := float64(good.ok.Swap(0)) / c.Duration("warmup").Seconds()
	runtime.GC()
	rss0, heap0 := rssBytes(), heapInUse()
	auditPath := filepath.Join(b.state, "audit.jsonl")
	anon0, err := anonymousBytes(auditPath)
	if err != nil {
		return err
	}
	size0 := dirSize(b.state)
	ctx, cancel := context.WithTimeout(c.Context, dur)
	var peak atomic.Int64
	peak.Store(rss0)
	sampled := make(chan struct{})
	go func() { // sample RSS every second
		defer close(sampled)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				peak.Store(max(peak.Load(), rssBytes()))
			}
		}
	}()
	run(ctx, true)
	cancel()
	<-sampled
	b.gov.Close() // flushes the last minute's refusal summary
	runtime.GC()
	rss1, heap1 := rssBytes(), heapInUse()
	anon1, err := anonymousBytes(auditPath)
	if err != nil {
		return err
	}
	size1 := dirSize(b.state)
	secs := dur.Seconds()
	rate := float64(good.ok.Load()) / secs
	fmt.Fprintf(w, "good clients: %d answers (%.1f/s; %.2f× their rate without the flood in the warm-up, %.1f/s), %d errors\n",
		good.ok.Load(), rate, rate/warmRate, warmRate, good.failed.Load())
	if e := firstErr.Load(); e != nil {
		fmt.Fprintf(w, "  first error: %v\n", e)
	}
	fmt.Fprintf(w, "flood: %d bad-token requests (%.0f/s): %d answered 401, %d answered 429, %d other\n",
		flood.refused.Load()+flood.limited.Load()+flood.failed.Load(), float64(flood.refused.Load()+flood.limited.Load())/secs,
		flood.refused.Load(), flood.limited.Load(), flood.failed.Load())
	fmt.Fprintf(w, "RSS after warm-up %.0f MB, peak %.0f MB, at the end %.0f MB: growth %+.1f MB (aim: at most 50)\n",
		mb(rss0), mb(peak.Load()), mb(rss1), mb(peak.Load()-rss0))
	fmt.Fprintf(w, "Go heap in use after a GC: %.0f MB after warm-up, %.0f MB at the end (the rest of RSS is DuckDB and the runtime)\n", mb(heap0), mb(heap1))
	fmt.Fprintf(w, "state folder: %+d bytes in all; the flood's audit lines %d bytes (aim: at most 10240)\n", size1-size0, anon1-anon0)
	if good.failed.Load() > 0 {
		return fmt.Errorf("load: %d good requests failed", good.failed.Load())
	}
	return nil
}

func heapInUse() int64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }

// rssBytes is this process's resident set size (Linux).
func rssBytes() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := bytes.CutPrefix(sc.Bytes(), []byte("VmRSS:")); ok {
			kb, _ := strconv.ParseInt(string(bytes.Fields(rest)[0]), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// anonymousBytes is the size of the audit log's lines for refusals that
// name no user: what a flood of bad tokens writes.
func anonymousBytes(path string) (int64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		var e struct{ Actor string }
		if json.Unmarshal(line, &e) == nil && e.Actor == "anonymous" {
			n += int64(len(line))
		}
	}
	return n, nil
}

func dirSize(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			n += info.Size()
		}
		return nil
	})
	return n
}
