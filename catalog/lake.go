package catalog

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"maps"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// A Manifest commits one dataset version: every part with its size and
// SHA-256, each table's schema and rows, and the provenance.
type Manifest struct {
	Dataset    string                    `json:"dataset"`
	Version    int                       `json:"version"`
	Created    time.Time                 `json:"created"`
	Tables     map[string]*TableManifest `json:"tables"`
	Provenance Provenance                `json:"provenance"`
	// Reports holds the ingest and de-identification reports, as written
	// by those stages (counts and hashes only).
	Reports map[string]json.RawMessage `json:"reports,omitempty"`
	// IcebergFiles are the files of the version's Iceberg tables (see
	// TableManifest.Iceberg), with their sizes and SHA-256, which Verify
	// checks as it checks the parts.
	IcebergFiles []Part `json:"iceberg_files,omitempty"`
	// EngineTables are the cohort engine's tables, written at publish
	// beside the tables (engine/; see package cohorts/enginetables): an
	// integer patient key, events sorted by code, for engines to read as
	// they are. Verify checks their parts as the tables'. Empty for
	// versions published without them.
	EngineTables map[string]*TableManifest `json:"engine_tables,omitempty"`
}

// TableManifest describes one table of a version.
type TableManifest struct {
	Rows   int64    `json:"rows"`
	Parts  []Part   `json:"parts"`
	Schema []Column `json:"schema"`
	// Iceberg is the table's Apache Iceberg metadata file, from the
	// lake's root (see package icelake); empty for versions published
	// before December 2026, or without a known lake location.
	Iceberg string `json:"iceberg_metadata,omitempty"`
}

// A Part is one immutable Parquet file.
type Part struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// A Column is a column of the data dictionary.
type Column struct {
	Name        string `json:"name"`
	Type        string `json:"type"`
	Nullable    bool   `json:"nullable"`
	Description string `json:"description"`
}

// Provenance says where a version came from; no value of it identifies
// anyone, and the pseudonym key appears only as its fingerprint.
type Provenance struct {
	ExtractFormat   string `json:"extract_format"`
	ExtractSource   string `json:"extract_source"`
	ExtractIdentity string `json:"extract_identity"`
	// For an export pulled from a FHIR server: the folder ingest read
	// (the pulled export, or its merge with the pull before) and the
	// export's transactionTime, which the next --since last pull asks
	// from.
	ExtractFolder   string `json:"extract_folder,omitempty"`
	TransactionTime string `json:"transaction_time,omitempty"`
	OptOutSHA256    string `json:"optout_list_sha256"`
	OptOutDate      string `json:"optout_list_date"`
	PolicyHash      string `json:"deid_policy_sha256"`
	PseudonymDomain string `json:"pseudonym_domain"`
	KeyFingerprint  string `json:"pseudonym_key_fingerprint"`
	// KeyVersion numbers the dataset's keys in the order its versions
	// first used them: 1 for the first key, 2 after a rotation, and a
	// key used before keeps its number (see KeyVersion).
	KeyVersion int    `json:"pseudonym_key_version,omitempty"`
	HubVersion string `json:"hub_version,omitempty"`
	// PublishedBy is the operating-system account and host that ran the
	// publish: the lake records who published, audit log or not.
	PublishedBy string `json:"published_by,omitempty"`
	// Overrides names each safety check the operator chose to pass by
	// (e.g. "optouts_stale"), so a version published despite one says so.
	Overrides []string `json:"overrides,omitempty"`
}

// Lake is the catalog over a Store.
type Lake struct {
	store Store
}

// NewLake returns the lake on store.
func NewLake(store Store) *Lake { return &Lake{store: store} }

// Store returns the lake's store.
func (l *Lake) Store() Store { return l.store }

// ErrNotFound is returned for a dataset or version without a manifest.
var ErrNotFound = errors.New("no such dataset version")

func versionPrefix(name string, v int) string {
	return "datasets/" + name + "/versions/" + strconv.Itoa(v) + "/"
}

// ValidName reports whether a dataset name is safe: lower-case letters,
// digits, '-' and '_', starting with a letter, at most 64 bytes.
func ValidName(name string) bool {
	if name == "" || len(name) > 64 || name[0] < 'a' || name[0] > 'z' {
		return false
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// Datasets lists the datasets with at least one committed version.
func (l *Lake) Datasets(ctx context.Context) ([]string, error) {
	paths, err := l.store.List(ctx, "datasets/")
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	for _, p := range paths {
		parts := strings.Split(p, "/")
		if len(parts) == 5 && parts[4] == "manifest.json" && !seen[parts[1]] {
			seen[parts[1]] = true
			out = append(out, parts[1])
		}
	}
	sort.Strings(out)
	return out, nil
}

// Versions lists a dataset's committed versions in ascending order.
func (l *Lake) Versions(ctx context.Context, name string) ([]int, error) {
	vs, _, err := l.scan(ctx, name)
	return vs, err
}

// scan lists a dataset's objects once and groups them by version number;
// committed holds the versions with a manifest, ascending.
func (l *Lake) scan(ctx context.Context, name string) (committed []int, files map[int][]string, err error) {
	paths, err := l.store.List(ctx, "datasets/"+name+"/versions/")
	if err != nil {
		return nil, nil, err
	}
	files = map[int][]string{}
	for _, p := range paths {
		parts := strings.Split(p, "/")
		if len(parts) < 5 {
			continue
		}
		v, err := strconv.Atoi(parts[3])
		if err != nil {
			continue
		}
		files[v] = append(files[v], p)
		if len(parts) == 5 && parts[4] == "manifest.json" {
			committed = append(committed, v)
		}
	}
	sort.Ints(committed)
	return committed, files, nil
}

// Manifest reads a committed version's manifest; version 0 means latest.
func (l *Lake) Manifest(ctx context.Context, name string, version int) (*Manifest, error) {
	if version == 0 {
		vs, err := l.Versions(ctx, name)
		if err != nil {
			return nil, err
		}
		if len(vs) == 0 {
			return nil, fmt.Errorf("%s: %w", name, ErrNotFound)
		}
		version = vs[len(vs)-1]
	}
	r, err := l.store.Open(ctx, versionPrefix(name, version)+"manifest.json")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s@%d: %w", name, version, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var m Manifest
	if err := json.NewDecoder(io.LimitReader(r, 64<<20)).Decode(&m); err != nil {
		return nil, fmt.Errorf("read manifest of %s@%d: %w", name, version, err)
	}
	return &m, nil
}

// A Publication writes one new version. Parts go under the version's
// prefix; nothing is visible until Commit writes the manifest.
// Its Create is safe for concurrent use.
type Publication struct {
	lake    *Lake
	name    string
	version int
	mu      sync.Mutex // guards parts: parts finish on several goroutines
	parts   map[string][]Part
}

// Begin claims the next version number of a dataset. The claim is a
// conditional put, so two publishers never share a version; a version
// whose run died keeps its claim and is skipped (gc removes its files).
func (l *Lake) Begin(ctx context.Context, name string) (*Publication, error) {
	if !ValidName(name) {
		return nil, fmt.Errorf("invalid dataset name %q: use lower-case letters, digits, - and _", name)
	}
	_, files, err := l.scan(ctx, name)
	if err != nil {
		return nil, err
	}
	v := 1
	for u := range files {
		v = max(v, u+1)
	}
	for tries := 0; tries < 100; tries, v = tries+1, v+1 {
		claim := []byte(time.Now().UTC().Format(time.RFC3339Nano))
		err := l.store.PutIfAbsent(ctx, versionPrefix(name, v)+"_claim", claim)
		if errors.Is(err, ErrExists) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("claim version %d of %s: %w", v, name, err)
		}
		return &Publication{lake: l, name: name, version: v, parts: map[string][]Part{}}, nil
	}
	return nil, fmt.Errorf("could not claim a version of %s", name)
}

// Version returns the version number being published.
func (p *Publication) Version() int { return p.version }

// Prefix is the version's folder in the lake (datasets/NAME/versions/V/).
func (p *Publication) Prefix() string { return versionPrefix(p.name, p.version) }

// Checksums returns the files under the version's folder sub (e.g.
// "iceberg/") with their sizes and SHA-256, for the manifest.
func (p *Publication) Checksums(ctx context.Context, sub string) ([]Part, error) {
	paths, err := p.lake.store.List(ctx, p.Prefix()+sub)
	if err != nil {
		return nil, err
	}
	out := make([]Part, 0, len(paths))
	for _, path := range paths {
		r, err := p.lake.store.Open(ctx, path)
		if err != nil {
			return nil, err
		}
		n, sum, err := digest(r)
		r.Close()
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		out = append(out, Part{Path: path, Size: n, SHA256: sum})
	}
	return out, nil
}

// Parts returns the paths of the parts of each table finished so far.
func (p *Publication) Parts() map[string][]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string][]string{}
	for t, ps := range p.parts {
		for _, part := range ps {
			out[t] = append(out[t], part.Path)
		}
		slices.Sort(out[t])
		out[t] = slices.Compact(out[t]) // a part written again is one file
	}
	return out
}

type partWriter struct {
	w      io.WriteCloser
	h      hash.Hash
	n      int64
	done   func(size int64, sum string)
	closed bool
	err    error
}

func (w *partWriter) Write(b []byte) (int, error) {
	n, err := w.w.Write(b)
	w.h.Write(b[:n])
	w.n += int64(n)
	return n, err
}

func (w *partWriter) Close() error {
	if w.closed {
		return w.err
	}
	w.closed = true
	if w.err = w.w.Close(); w.err == nil {
		w.done(w.n, hex.EncodeToString(w.h.Sum(nil)))
	}
	return w.err
}

// Abort drops the part: it is never listed in the manifest, and the
// store's writer is aborted where it can be (no file, no upload is left).
func (w *partWriter) Abort() {
	if w.closed {
		return
	}
	w.closed, w.err = true, errAborted
	if a, ok := w.w.(interface{ Abort() }); ok {
		a.Abort()
		return
	}
	w.w.Close()
}

var errAborted = errors.New("part aborted")

// Create opens part k of a table; it implements deid.Sink.
func (p *Publication) Create(ctx context.Context, table string, k int) (io.WriteCloser, error) {
	path := fmt.Sprintf("%s%s/part-%05d.parquet", versionPrefix(p.name, p.version), table, k)
	w, err := p.lake.store.Create(ctx, path)
	if err != nil {
		return nil, err
	}
	return &partWriter{w: w, h: sha256.New(), done: func(size int64, sum string) {
		p.mu.Lock()
		p.parts[table] = append(p.parts[table], Part{Path: path, Size: size, SHA256: sum})
		p.mu.Unlock()
	}}, nil
}

// Add copies a local file into the version's folder as name (e.g.
// "engine/patients.parquet"), and returns it as a part: its size and
// SHA-256 as written. A copy that fails part-way leaves nothing.
func (p *Publication) Add(ctx context.Context, name, file string) (Part, error) {
	f, err := os.Open(file)
	if err != nil {
		return Part{}, err
	}
	defer f.Close()
	path := p.Prefix() + name
	w, err := p.lake.store.Create(ctx, path)
	if err != nil {
		return Part{}, err
	}
	var part Part
	pw := &partWriter{w: w, h: sha256.New(), done: func(size int64, sum string) { part = Part{Path: path, Size: size, SHA256: sum} }}
	if _, err := io.Copy(pw, f); err != nil {
		pw.Abort()
		return Part{}, fmt.Errorf("write %s: %w", path, err)
	}
	if err := pw.Close(); err != nil {
		return Part{}, fmt.Errorf("write %s: %w", path, err)
	}
	return part, nil
}

// Local returns the parts written so far as local files, by table: where
// they lie on a local lake; from any other, fetched into cacheDir and
// checked against what was written, as Lake.Local does.
func (p *Publication) Local(ctx context.Context, cacheDir string) (map[string][]string, error) {
	p.mu.Lock()
	byPath := map[string]Part{} // a part written again is one file: its last write counts
	tableOf := map[string]string{}
	for t, ps := range p.parts {
		for _, part := range ps {
			byPath[part.Path], tableOf[part.Path] = part, t
		}
	}
	p.mu.Unlock()
	lp, local := p.lake.store.(LocalPather)
	out := map[string][]string{}
	for _, path := range slices.Sorted(maps.Keys(byPath)) {
		var f string
		var err error
		if local {
			f, err = lp.LocalPath(path)
		} else {
			f, err = p.lake.fetch(ctx, byPath[path], cacheDir)
		}
		if err != nil {
			return nil, err
		}
		out[tableOf[path]] = append(out[tableOf[path]], f)
	}
	return out, nil
}

// Abandon removes what the publication wrote (its parts, then its
// claim) without committing: a run that refuses to publish leaves nothing
// in the lake. Parts still open must be aborted first. A failure is
// returned; `hub catalog gc` removes whatever is left.
func (p *Publication) Abandon(ctx context.Context) error {
	prefix := versionPrefix(p.name, p.version)
	files, err := p.lake.store.List(ctx, prefix)
	if err != nil {
		return fmt.Errorf("abandon %s@%d: %w", p.name, p.version, err)
	}
	for _, f := range files {
		if f == prefix+"_claim" || f == prefix+"manifest.json" {
			continue
		}
		if err := p.lake.store.Delete(ctx, f); err != nil {
			return fmt.Errorf("abandon %s@%d: %w", p.name, p.version, err)
		}
	}
	if err := p.lake.store.Delete(ctx, prefix+"_claim"); err != nil {
		return fmt.Errorf("abandon %s@%d: %w", p.name, p.version, err)
	}
	return nil
}

// Commit writes the manifest, making the version visible. m's parts are
// filled in from what was written.
func (p *Publication) Commit(ctx context.Context, m *Manifest) error {
	m.Dataset, m.Version = p.name, p.version
	if m.Created.IsZero() {
		m.Created = time.Now().UTC()
	}
	p.mu.Lock()
	for table, tm := range m.Tables {
		// Parts finish in any order; the manifest lists them by path.
		tm.Parts = append([]Part(nil), p.parts[table]...)
		sort.Slice(tm.Parts, func(i, j int) bool { return tm.Parts[i].Path < tm.Parts[j].Path })
	}
	p.mu.Unlock()
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := p.lake.store.PutIfAbsent(ctx, versionPrefix(p.name, p.version)+"manifest.json", data); err != nil {
		return fmt.Errorf("commit %s@%d: %w", p.name, p.version, err)
	}
	return nil
}

// Verify reads every part of a version and checks its size and SHA-256.
func (l *Lake) Verify(ctx context.Context, m *Manifest) error {
	check := func(what string, part Part) error {
		r, err := l.store.Open(ctx, part.Path)
		if err != nil {
			return fmt.Errorf("%s: open %s: %w", what, part.Path, err)
		}
		err = matches(r, part)
		r.Close()
		if errors.Is(err, ErrTampered) {
			return fmt.Errorf("%s: %s does not match its manifest: %w", what, part.Path, err)
		}
		if err != nil {
			return fmt.Errorf("%s: read %s: %w", what, part.Path, err)
		}
		return nil
	}
	for table, tm := range m.Tables {
		for _, part := range tm.Parts {
			if err := check(table, part); err != nil {
				return err
			}
		}
	}
	for _, f := range m.IcebergFiles {
		if err := check("iceberg", f); err != nil {
			return err
		}
	}
	for table, tm := range m.EngineTables {
		for _, part := range tm.Parts {
			if err := check("engine table "+table, part); err != nil {
				return err
			}
		}
	}
	return nil
}

// ErrTampered is returned when a part's bytes differ from its manifest.
var ErrTampered = errors.New("part checksum mismatch")

// matches reads r to its end and returns ErrTampered unless its size and
// SHA-256 are the part's.
func matches(r io.Reader, part Part) error {
	n, sum, err := digest(r)
	if err != nil {
		return err
	}
	if n != part.Size || sum != part.SHA256 {
		return ErrTampered
	}
	return nil
}

// digest reads r to its end and returns its size and SHA-256 in hex.
func digest(r io.Reader) (int64, string, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	return n, hex.EncodeToString(h.Sum(nil)), err
}

// GC removes the files of versions without a manifest whose claim is older
// than minAge (so a publish still running is left alone), and leftover
// temporary files of committed versions. It returns the paths removed.
func (l *Lake) GC(ctx context.Context, name string, minAge time.Duration) ([]string, error) {
	committed, byVersion, err := l.scan(ctx, name)
	if err != nil {
		return nil, err
	}
	isCommitted := map[int]bool{}
	for _, v := range committed {
		isCommitted[v] = true
	}
	var removed []string
	for v, files := range byVersion {
		if isCommitted[v] {
			for _, f := range files {
				if strings.Contains(f, ".tmp-") {
					if err := l.store.Delete(ctx, f); err != nil {
						return removed, err
					}
					removed = append(removed, f)
				}
			}
			continue
		}
		if !l.claimOlder(ctx, versionPrefix(name, v)+"_claim", minAge) {
			continue
		}
		sort.Strings(files)
		for _, f := range files {
			if strings.HasSuffix(f, "/_claim") {
				continue
			}
			if err := l.store.Delete(ctx, f); err != nil {
				return removed, err
			}
			removed = append(removed, f)
		}
		// The claim goes last, so a half-run gc leaves the version owned.
		if err := l.store.Delete(ctx, versionPrefix(name, v)+"_claim"); err != nil {
			return removed, err
		}
		removed = append(removed, versionPrefix(name, v)+"_claim")
	}
	sort.Strings(removed)
	return removed, nil
}

func (l *Lake) claimOlder(ctx context.Context, path string, minAge time.Duration) bool {
	r, err := l.store.Open(ctx, path)
	if err != nil {
		return true // no claim at all: stray files
	}
	defer r.Close()
	b, _ := io.ReadAll(io.LimitReader(r, 128))
	t, err := time.Parse(time.RFC3339Nano, string(b))
	return err != nil || time.Since(t) >= minAge
}

// KeyVersion is the version number of the key with fingerprint fp for
// a new version of dataset name: the number the dataset's versions gave
// it, or one more than the keys they used.
func (l *Lake) KeyVersion(ctx context.Context, name, fp string) (int, error) {
	vs, err := l.Versions(ctx, name)
	if err != nil {
		return 0, err
	}
	seen := map[string]int{}
	for _, v := range vs {
		m, err := l.Manifest(ctx, name, v)
		if err != nil {
			return 0, err
		}
		if f := m.Provenance.KeyFingerprint; f != "" && seen[f] == 0 {
			seen[f] = len(seen) + 1
		}
	}
	if n := seen[fp]; n > 0 {
		return n, nil
	}
	return len(seen) + 1, nil
}
