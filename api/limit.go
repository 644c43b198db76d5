package api

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// Failed authentications are limited per client address: past
// MaxAuthFailures in a minute, a client's requests are answered 429
// without looking at the token (no hash, no audit line), until the
// minute is over. Good clients, whose tokens work, are never counted.
const (
	MaxAuthFailures = 20
	failureWindow   = time.Minute
	maxTracked      = 10_000 // addresses tracked at once; past it the table starts afresh
)

// Failures counts failed authentications per client address; the API
// and the web app's sign-in share one.
type Failures struct {
	mu   sync.Mutex
	now  func() time.Time
	seen map[string]*failureCount
}

type failureCount struct {
	since time.Time
	n     int
}

// NewFailures returns an empty count on the clock now.
func NewFailures(now func() time.Time) *Failures {
	return &Failures{now: now, seen: map[string]*failureCount{}}
}

// ClientAddr is the request's address without its port.
func ClientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// Blocked reports whether addr has failed too often this window, and
// when it may try again.
func (f *Failures) Blocked(addr string) (bool, time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.seen[addr]
	if c == nil {
		return false, 0
	}
	left := failureWindow - f.now().Sub(c.since)
	if left <= 0 {
		delete(f.seen, addr)
		return false, 0
	}
	return c.n >= MaxAuthFailures, left
}

// Fail counts a failed authentication of addr.
func (f *Failures) Fail(addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	c := f.seen[addr]
	if c == nil || now.Sub(c.since) >= failureWindow {
		if len(f.seen) >= maxTracked {
			f.seen = map[string]*failureCount{}
		}
		c = &failureCount{since: now}
		f.seen[addr] = c
	}
	c.n++
}
