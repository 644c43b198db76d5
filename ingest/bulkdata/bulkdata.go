// Package bulkdata pulls a FHIR Bulk Data export ($export, FHIR Bulk
// Data Access IG 2.0) from an LHCRE's FHIR server into a landing folder:
// kick-off with Prefer: respond-async, polling the status URL as the
// server's Retry-After says, backing off on 429 and 503, downloading the
// manifest's files, and deleting the job when done. Start streams the
// files through ingest as they download (stream.go); Pull downloads them
// all. The pull keeps its state in the folder (pull.json), so a pull cut
// short by a crash or a network fault resumes its job and fetches only the
// files it does not have whole; a connection cut mid-file is asked again
// from where it stopped. Every file's size and XXH3-128 (the hash ingest's
// report gives each file) are recorded there: the raw export is the
// provenance of the version ingest publishes from it.
//
// A server that asks for authorisation is given an access token got with
// SMART Backend Services (smart.go); one that asks for none, none.
package bulkdata

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nhs-hub/hub/ingest"
)

// Defaults of a pull.
const (
	DefaultParallel = 4
	DefaultRetries  = 8
	// DefaultPoll is the wait between status requests when the server
	// gives no Retry-After.
	DefaultPoll = 2 * time.Second
	// MaxWait bounds any one wait a server asks for.
	MaxWait = 5 * time.Minute
)

// Config is one pull.
type Config struct {
	// Base is the FHIR base URL ([base]/$export), or a Group's URL
	// ([base]/Group/ID/$export).
	Base string
	// Types are the resource types asked for (_type); empty for all. The
	// files download in this order: give ingest.FHIRReadOrder's, the order
	// ingest first reads them.
	Types []string
	// Since, when set, asks only for what changed after it (_since, an
	// instant: the transactionTime of the pull before).
	Since string
	// Dir is the landing folder: the files, manifest.json and pull.json.
	Dir string
	// Client makes the requests; nil means a client with timeouts.
	Client *http.Client
	// Parallel bounds the downloads at once (0: DefaultParallel);
	// Retries bounds the attempts of a request (0: DefaultRetries).
	Parallel, Retries int
	// Ahead is how many files a Stream asks for ahead of the one ingest
	// reads, to download into the folder while the network is the slow
	// side (up to Parallel-1; 0: none). Only a slow link gains: on a fast
	// one they are written and read back for nothing (see hungry).
	Ahead int
	// Poll is the wait when a server gives no Retry-After (0:
	// DefaultPoll).
	Poll time.Duration
	// Auth, when set, authorises the pull with SMART Backend Services.
	Auth *Auth
	// Progress, when set, receives a line now and then.
	Progress io.Writer
	Logger   *slog.Logger
}

// A File is one downloaded file of the export.
type File struct {
	Type  string `json:"type"`
	URL   string `json:"url"`
	Name  string `json:"name"`
	Bytes int64  `json:"bytes,omitempty"`
	XXH3  string `json:"xxh3_128,omitempty"` // as ingest's report hashes a file

	Error   bool `json:"error,omitempty"`   // an OperationOutcome file of the manifest's error list
	Deleted bool `json:"deleted,omitempty"` // a Bundle file of the manifest's deleted list
}

// State is pull.json: the job and what of it is in the folder.
type State struct {
	Request         string `json:"request"`
	Status          string `json:"status_url"`
	TransactionTime string `json:"transaction_time,omitempty"`
	Files           []File `json:"files,omitempty"`
	Complete        bool   `json:"complete"`
}

// Manifest is the part of a completion manifest a pull reads.
type Manifest struct {
	TransactionTime     string `json:"transactionTime"`
	Request             string `json:"request"`
	RequiresAccessToken bool   `json:"requiresAccessToken"`
	Output              []struct {
		Type string `json:"type"`
		URL  string `json:"url"`
	} `json:"output"`
	Error []struct {
		Type string `json:"type"`
		URL  string `json:"url"`
	} `json:"error"`
	// Deleted (Bulk Data 2.0, with _since) lists Bundle files whose
	// entries' requests DELETE the resources removed since.
	Deleted []struct {
		Type string `json:"type"`
		URL  string `json:"url"`
	} `json:"deleted,omitempty"`
}

// A ServerError is a request the server answered with an error status;
// its message is the OperationOutcome's diagnostics, never a body copied
// whole.
type ServerError struct {
	Op     string
	Status int
	Msg    string
}

func (e *ServerError) Error() string {
	if e.Msg == "" {
		return fmt.Sprintf("%s: the server answered %d %s", e.Op, e.Status, http.StatusText(e.Status))
	}
	return fmt.Sprintf("%s: the server answered %d %s: %s", e.Op, e.Status, http.StatusText(e.Status), e.Msg)
}

// ErrTooManyRetries is wrapped by the error of a request that kept
// failing (a network fault, 429 or 5xx) through every retry.
var ErrTooManyRetries = errors.New("gave up after retries")

type puller struct {
	cfg    Config
	ts     *tokenSource // nil without Auth
	log    *slog.Logger
	state  State
	mu     sync.Mutex // guards state.Files while files download
	saving sync.Mutex // one save at a time
}

// Pull runs (or resumes) an export into cfg.Dir, downloading every file,
// and returns its state. Start streams one through ingest instead.
func Pull(ctx context.Context, cfg Config) (*State, error) {
	s, err := Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	if err := s.Finish(ctx); err != nil {
		return nil, err
	}
	return s.State(), nil
}

// newPuller fills in cfg's defaults and reads the folder's pull state.
func newPuller(cfg Config) (*puller, error) {
	if cfg.Client == nil {
		cfg.Client = &http.Client{Transport: &http.Transport{Proxy: http.ProxyFromEnvironment,
			ResponseHeaderTimeout: time.Minute, IdleConnTimeout: time.Minute, MaxIdleConnsPerHost: 16}}
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = DefaultParallel
	}
	if cfg.Retries <= 0 {
		cfg.Retries = DefaultRetries
	}
	if cfg.Poll <= 0 {
		cfg.Poll = DefaultPoll
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create landing folder: %w", err)
	}
	p := &puller{cfg: cfg, log: cfg.Logger.With("component", "bulkdata")}
	if cfg.Auth != nil {
		if cfg.Auth.ClientID == "" || cfg.Auth.Key == nil {
			return nil, errors.New("SMART Backend Services need a client id and a key")
		}
		p.ts = &tokenSource{auth: *cfg.Auth, base: cfg.Base, client: cfg.Client}
	}
	if err := p.load(); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *puller) statePath() string { return filepath.Join(p.cfg.Dir, "pull.json") }

// load reads pull.json when the folder holds a pull of the same request.
func (p *puller) load() error {
	b, err := os.ReadFile(p.statePath())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read pull state: %w", err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("read pull state %s: %w (remove it to start the pull afresh)", p.statePath(), err)
	}
	if st.Request != p.request() {
		return fmt.Errorf("the landing folder %s holds a pull of another request; give this pull a folder of its own", p.cfg.Dir)
	}
	p.state = st
	return nil
}

// save writes pull.json whole (a temporary file renamed into place).
func (p *puller) save() error {
	p.saving.Lock()
	defer p.saving.Unlock()
	p.mu.Lock()
	b, err := json.MarshalIndent(p.state, "", "  ")
	p.mu.Unlock()
	if err != nil {
		return err
	}
	tmp := p.statePath() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write pull state: %w", err)
	}
	return os.Rename(tmp, p.statePath())
}

// request is the kick-off URL.
func (p *puller) request() string {
	q := url.Values{"_outputFormat": {"application/fhir+ndjson"}}
	if len(p.cfg.Types) > 0 {
		q.Set("_type", strings.Join(p.cfg.Types, ","))
	}
	if p.cfg.Since != "" {
		q.Set("_since", p.cfg.Since)
	}
	return strings.TrimSuffix(p.cfg.Base, "/") + "/$export?" + q.Encode()
}

// manifest kicks the export off (unless resuming a job the server still
// has) and polls until it completes.
func (p *puller) manifest(ctx context.Context) (*Manifest, error) {
	if p.state.Status != "" {
		m, gone, err := p.poll(ctx)
		if err == nil || !gone {
			return m, err
		}
		p.log.Info("the server no longer has the job; starting again")
		p.state = State{}
	}
	p.state.Request = p.request()
	resp, err := p.do(ctx, "kick-off", true, func() (*http.Request, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.state.Request, nil)
		if err == nil {
			req.Header.Set("Accept", "application/fhir+json")
			req.Header.Set("Prefer", "respond-async")
		}
		return req, err
	})
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return nil, &ServerError{Op: "kick-off", Status: resp.StatusCode, Msg: "expected 202 Accepted"}
	}
	loc, err := resolve(p.state.Request, resp.Header.Get("Content-Location"))
	if err != nil {
		return nil, fmt.Errorf("kick-off: the server gave no usable Content-Location: %w", err)
	}
	p.state.Status = loc
	if err := p.save(); err != nil {
		return nil, err
	}
	m, _, err := p.poll(ctx)
	return m, err
}

// poll asks the status URL until the export completes. gone reports a job
// the server no longer knows (404 or 410), which a resumed pull restarts.
func (p *puller) poll(ctx context.Context) (m *Manifest, gone bool, err error) {
	for {
		resp, err := p.do(ctx, "status", true, func() (*http.Request, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.state.Status, nil)
			if err == nil {
				req.Header.Set("Accept", "application/json")
			}
			return req, err
		})
		if err != nil {
			var se *ServerError
			if errors.As(err, &se) && (se.Status == http.StatusNotFound || se.Status == http.StatusGone) {
				return nil, true, err
			}
			return nil, false, err
		}
		switch resp.StatusCode {
		case http.StatusAccepted:
			resp.Body.Close()
			if prog := resp.Header.Get("X-Progress"); prog != "" && p.cfg.Progress != nil {
				fmt.Fprintf(p.cfg.Progress, "\r\033[Kbulk export: %.60s", prog)
			}
			if err := sleep(ctx, retryAfter(resp.Header.Get("Retry-After"), p.cfg.Poll)); err != nil {
				return nil, false, err
			}
		case http.StatusOK:
			var m Manifest
			err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&m)
			resp.Body.Close()
			if err != nil {
				return nil, false, fmt.Errorf("status: the completion manifest is not JSON: %w", err)
			}
			p.state.TransactionTime = m.TransactionTime
			return &m, false, nil
		default:
			resp.Body.Close()
			return nil, false, &ServerError{Op: "status", Status: resp.StatusCode, Msg: "unexpected status"}
		}
	}
}

// files lists the manifest's files as the folder will hold them, in the
// order ingest first reads them (cfg.Types' order).
func (p *puller) files(m *Manifest) ([]File, error) {
	var types, urls []string
	for _, o := range m.Output {
		types, urls = append(types, o.Type), append(urls, o.URL)
	}
	names, err := ingest.BulkFileNames(types, urls)
	if err != nil {
		return nil, fmt.Errorf("the manifest: %w", err)
	}
	var want []File
	for i, o := range m.Output {
		want = append(want, File{Type: o.Type, URL: o.URL, Name: names[i]})
	}
	for i, e := range m.Error {
		want = append(want, File{Type: "OperationOutcome", URL: e.URL, Name: fmt.Sprintf("OperationOutcome.%03d.ndjson", i), Error: true})
	}
	for i, d := range m.Deleted {
		// Not a part name, so ingest leaves it alone; Merge reads it.
		want = append(want, File{Type: "Bundle", URL: d.URL, Name: fmt.Sprintf("deleted.%03d.ndjson", i), Deleted: true})
	}
	downloadOrder(want, p.cfg.Types)
	return want, nil
}

// whole reports whether a file the state lists is in the folder as it
// was recorded.
func (p *puller) whole(f File) bool {
	st, err := os.Stat(filepath.Join(p.cfg.Dir, f.Name))
	return err == nil && st.Size() == f.Bytes && f.XXH3 != ""
}

// writeManifest writes the completion manifest beside the files, as
// ingest reads it.
func (p *puller) writeManifest(m *Manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(p.cfg.Dir, "manifest.json"), b, 0o644)
}

// deleteJob tells the server the files may go; a failure is logged, not
// returned: the export is already safe in the folder.
func (p *puller) deleteJob(ctx context.Context) {
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, p.state.Status, nil)
	if err != nil {
		return
	}
	if p.ts != nil {
		if err := p.ts.authorize(ctx, req, false); err != nil {
			p.log.Warn("delete the export job", "err", err)
			return
		}
	}
	resp, err := p.cfg.Client.Do(req)
	if err != nil {
		p.log.Warn("delete the export job", "err", err)
		return
	}
	resp.Body.Close()
}

const maxRenewals = 3

// do sends a request, retrying a network fault, 429 and 5xx with backoff
// (the server's Retry-After when it gives one), at most cfg.Retries
// times. Any other 4xx is returned as a ServerError with the
// OperationOutcome's diagnostics.
func (p *puller) do(ctx context.Context, op string, auth bool, newReq func() (*http.Request, error)) (*http.Response, error) {
	var last error
	// A 401 asks for a new token, up to maxRenewals times a request: with
	// several downloads at once, a token one of them renews can expire
	// again (or be revoked) before its retry, so once is not enough; a 401
	// that persists is bad credentials.
	renew, renewals := false, 0
	for attempt := 0; attempt < p.cfg.Retries; attempt++ {
		req, err := newReq()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
		if auth && p.ts != nil {
			if err := p.ts.authorize(ctx, req, renew); err != nil {
				return nil, fmt.Errorf("%s: %w", op, err)
			}
		}
		resp, err := p.cfg.Client.Do(req)
		var wait time.Duration
		switch {
		case err == nil && resp.StatusCode == http.StatusUnauthorized && auth && p.ts != nil && renewals < maxRenewals:
			resp.Body.Close()
			renew = true // the token expired, or was revoked: get another
			renewals++
			attempt-- // not a failure of the server's: it does not use up a retry
			p.log.Info("access token refused; getting a new one", "op", op)
			continue
		case err == nil && resp.StatusCode == http.StatusUnauthorized && p.ts == nil:
			resp.Body.Close()
			return nil, &ServerError{Op: op, Status: resp.StatusCode, Msg: "the server asks for authorisation: pull with SMART Backend Services (--fhir-client-id and --fhir-key-file)"}
		case err != nil:
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			last, wait = fmt.Errorf("%s: %w", op, redactURL(err)), backoff(attempt)
		case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
			msg := outcome(resp.Body)
			resp.Body.Close()
			last = &ServerError{Op: op, Status: resp.StatusCode, Msg: msg}
			wait = retryAfter(resp.Header.Get("Retry-After"), backoff(attempt))
		case resp.StatusCode >= 400:
			msg := outcome(resp.Body)
			resp.Body.Close()
			return nil, &ServerError{Op: op, Status: resp.StatusCode, Msg: msg}
		default:
			return resp, nil
		}
		renew = false
		p.log.Warn("request failed; retrying", "op", op, "attempt", attempt+1, "wait", wait)
		if err := sleep(ctx, wait); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("%w (%d attempts): %w", ErrTooManyRetries, p.cfg.Retries, last)
}

// outcome returns an OperationOutcome's diagnostics (bounded), or "".
func outcome(r io.Reader) string {
	var oo struct {
		ResourceType string `json:"resourceType"`
		Issue        []struct {
			Code        string `json:"code"`
			Diagnostics string `json:"diagnostics"`
		} `json:"issue"`
	}
	if json.NewDecoder(io.LimitReader(r, 1<<16)).Decode(&oo) != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 {
		return ""
	}
	msg := oo.Issue[0].Code
	if d := oo.Issue[0].Diagnostics; d != "" {
		msg += ": " + d
	}
	if len(msg) > 300 {
		msg = msg[:300]
	}
	return msg
}

// redactURL drops a URL's query from a client error: a signed download
// URL's query may hold a credential.
func redactURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if u, perr := url.Parse(ue.URL); perr == nil {
			u.RawQuery = ""
			return &url.Error{Op: ue.Op, URL: u.String(), Err: ue.Err}
		}
	}
	return err
}

// retryAfter reads a Retry-After header (seconds or an HTTP date),
// bounded by MaxWait; def when there is none.
func retryAfter(h string, def time.Duration) time.Duration {
	if h == "" {
		return def
	}
	if s, err := strconv.Atoi(strings.TrimSpace(h)); err == nil && s >= 0 {
		return min(time.Duration(s)*time.Second, MaxWait)
	}
	if t, err := http.ParseTime(h); err == nil {
		return min(max(time.Until(t), 0), MaxWait)
	}
	return def
}

// backoff is an exponential wait with jitter: 0.5, 1, 2, ... s, at most
// a minute.
func backoff(attempt int) time.Duration {
	d := min(500*time.Millisecond<<min(attempt, 7), time.Minute)
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// resolve makes a Content-Location absolute against the request URL.
func resolve(base, loc string) (string, error) {
	if loc == "" {
		return "", errors.New("none given")
	}
	b, err := url.Parse(base)
	if err != nil {
		return "", err
	}
	u, err := b.Parse(loc)
	if err != nil {
		return "", err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("scheme %q", u.Scheme)
	}
	return u.String(), nil
}
