package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/catalog/file"
	"github.com/nhs-hub/hub/catalog/s3"
	"github.com/nhs-hub/hub/deid"
	"github.com/nhs-hub/hub/governance"
	"github.com/nhs-hub/hub/ingest"
	"github.com/nhs-hub/hub/ingest/bulkdata"
	"github.com/nhs-hub/hub/internal/pipeline"
	"github.com/urfave/cli/v2"
)

// publish runs ingest → deid → publish.
func publish(c *cli.Context) error {
	name := c.String("dataset")
	if name == "" {
		return errors.New("name the dataset to publish with --dataset NAME, or run with --check to validate the extract only")
	}
	keyPath := c.String("key-file")
	if keyPath == "" {
		return errors.New("no pseudonymisation key: pass --key-file FILE or set HUB_PSEUDONYM_KEY_FILE (a file of at least 32 random bytes, e.g. `head -c 32 /dev/urandom > key`)")
	}
	key, err := deid.LoadKey(keyPath)
	if err != nil {
		return fmt.Errorf("%w (make one with `head -c 32 /dev/urandom > FILE`)", err)
	}
	policy := deid.DefaultPolicy()
	if p := c.String("policy"); p != "" {
		f, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("open policy: %w", err)
		}
		policy, err = deid.LoadPolicy(f)
		f.Close()
		if err != nil {
			return err
		}
	}
	lake, err := openLake(c)
	if err != nil {
		return err
	}
	opts, done, err := ingestOptions(c)
	if err != nil {
		return err
	}
	defer done()
	date := c.String("optouts-date")
	if date == "" {
		if st, err := os.Stat(c.String("optouts")); err == nil {
			date = st.ModTime().UTC().Format(time.DateOnly)
		}
	}
	// Flags first: a mistyped one is said before a pull's download.
	maxAge, err := parseAge(c.String("optouts-max-age"))
	if err != nil {
		return err
	}
	over, err := overrides(c)
	if err != nil {
		return err
	}
	src, pulled, err := extractSource(c)
	if err != nil {
		return err
	}
	defer pulled.Close()
	location, icebergProps, err := lakeLocation(c)
	if err != nil {
		return err
	}
	res, err := pipeline.Run(c.Context, pipeline.Config{
		Dataset: name, Source: src, SourceName: c.String("extract"),
		Ingest: opts, OptOutDate: date, Policy: policy, Key: key, Lake: lake, Logger: logger(c),
		OptOutMaxAge: maxAge, MaxQuarantine: c.Float64("max-quarantine") / 100, Overrides: over,
		ExtractFolder: pulled.folder, TransactionTime: pulled.transactionTime, PublishedBy: publisher(),
		LakeLocation: location, IcebergProps: icebergProps, EngineTables: c.Bool("engine-tables"),
	})
	var refused *pipeline.RefusedError
	if errors.As(err, &refused) {
		if res != nil && res.Ingest != nil {
			res.Ingest.WriteText(c.App.ErrWriter)
		}
		return fmt.Errorf("%w; nothing was published (fix the input, or pass --override %s to publish anyway, which the manifest and the audit log record)", err, refused.Check)
	}
	if errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("publish %s: %w (the lake's disk is full and nothing was published: free space, run `hub catalog gc %s` to remove the leftover parts, then run again)", name, err, name)
	}
	if err != nil {
		return fmt.Errorf("publish %s: %w (nothing was published; `hub catalog gc %s` removes any leftover parts)", name, err, name)
	}
	if err := auditPublish(c, res.Manifest); err != nil {
		return fmt.Errorf("%s@%d was published, but recording it in the audit log failed: %w", name, res.Manifest.Version, err)
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, res.Manifest)
	}
	if err := res.Ingest.WriteText(c.App.Writer); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "\n%s\n", res.Deid.KAnonymity.Summary())
	fmt.Fprintf(c.App.Writer, "published %s@%d to %s (key version %d, fingerprint %s, domain %s)\n", name, res.Manifest.Version, c.String("lake"),
		res.Manifest.Provenance.KeyVersion, res.Deid.KeyFingerprint, res.Deid.Domain)
	return nil
}

// s3Flags say how to reach S3-compatible storage. The access key and
// secret come only from the environment (AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY), so they never show in a process list or --help.
func s3Flags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "s3-endpoint", EnvVars: []string{"HUB_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"}, Usage: "S3 endpoint: http://host:port or https://host, or host:port with --s3-tls (credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"},
		&cli.StringFlag{Name: "s3-region", EnvVars: []string{"HUB_S3_REGION", "AWS_REGION"}, Usage: "S3 region"},
		&cli.BoolFlag{Name: "s3-tls", Value: true, EnvVars: []string{"HUB_S3_TLS"}, Usage: "use TLS for an endpoint given without a scheme (--s3-tls=false for a local MinIO)"},
	}
}

// lakeLocation is the lake's location as other engines reach it, for
// the Iceberg tables' metadata: the lake folder's absolute path, or its
// s3://bucket/prefix with the properties iceberg-go's S3 file IO needs
// (the credentials only in memory, from the environment as for the lake).
func lakeLocation(c *cli.Context) (string, map[string]string, error) {
	loc, err := lakeRoot(c)
	if err != nil || !strings.HasPrefix(loc, "s3://") {
		return loc, nil, err
	}
	endpoint, tls, err := s3Endpoint(c.String("s3-endpoint"), c.Bool("s3-tls"), c.IsSet("s3-tls"))
	if err != nil {
		return "", nil, err
	}
	scheme := "http://"
	if tls {
		scheme = "https://"
	}
	region := c.String("s3-region")
	if region == "" {
		region = "us-east-1"
	}
	return loc, map[string]string{"s3.endpoint": scheme + endpoint, "s3.region": region,
		"s3.access-key-id": os.Getenv("AWS_ACCESS_KEY_ID"), "s3.secret-access-key": os.Getenv("AWS_SECRET_ACCESS_KEY")}, nil
}

// lakeRoot is --lake as other programs reach it: the folder's absolute
// path, or s3://bucket/prefix without a trailing slash.
func lakeRoot(c *cli.Context) (string, error) {
	loc := c.String("lake")
	if strings.HasPrefix(loc, "s3://") {
		return strings.TrimRight(loc, "/"), nil
	}
	return filepath.Abs(loc)
}

// openLake opens the lake named by --lake: a folder or s3://bucket/prefix.
func openLake(c *cli.Context) (*catalog.Lake, error) {
	loc := c.String("lake")
	if strings.HasPrefix(loc, "s3://") {
		st, err := openS3(c, loc)
		if err != nil {
			return nil, err
		}
		return catalog.NewLake(st), nil
	}
	store, err := file.Open(loc)
	if err != nil {
		return nil, err
	}
	return catalog.NewLake(store), nil
}

// extractSource opens --extract: a folder, or an s3://bucket/prefix
// landing area that the LHCRE drops extracts into.
func extractSource(c *cli.Context) (ingest.Source, pulledExport, error) {
	loc := c.String("extract")
	if strings.HasPrefix(loc, "http://") || strings.HasPrefix(loc, "https://") {
		return pullExtract(c, loc)
	}
	if c.String("since") != "" {
		return nil, pulledExport{}, usageError{errors.New("--since asks a FHIR server for what changed: give --extract the server's URL")}
	}
	if !strings.HasPrefix(loc, "s3://") {
		if _, err := os.Stat(loc); err != nil {
			return nil, pulledExport{}, fmt.Errorf("extract folder: %w", err)
		}
		return ingest.Dir(loc), pulledExport{}, nil
	}
	st, err := openS3(c, loc)
	if err != nil {
		return nil, pulledExport{}, err
	}
	return storeSource{st}, pulledExport{}, nil
}

// A pulledExport says where a pull left the export ingest reads, and its
// transactionTime.
type pulledExport struct {
	folder, transactionTime string
	stream                  *bulkdata.Stream // a pull streamed through ingest
}

// Close ends a streamed pull (a no-op otherwise), keeping its whole files
// for a resumed pull.
func (p pulledExport) Close() {
	if p.stream != nil {
		p.stream.Close()
	}
}

// pulledStream is a pull streamed through ingest, which says what
// arrived when ingest finishes it.
type pulledStream struct {
	*bulkdata.Stream
	w         io.Writer
	base, dir string
	// dest, when set, is the S3 landing area the whole export is copied
	// to (destURL) before ingest ends.
	dest    *s3.Store
	destURL string
}

func (p pulledStream) Finish(ctx context.Context) error {
	if err := p.Stream.Finish(ctx); err != nil {
		return fmt.Errorf("pull %s: %w", p.base, err)
	}
	st := p.State()
	streamed, back := p.Streamed()
	fmt.Fprintf(p.w, "pulled %d files of the export of %s (transaction time %s) into %s; ingest read %.0f MB as it arrived and %.0f MB back from the folder\n",
		len(st.Files), p.base, st.TransactionTime, p.dir, float64(streamed)/1e6, float64(back)/1e6)
	if p.dest == nil {
		return nil
	}
	names := []string{}
	for _, f := range st.Files {
		names = append(names, f.Name)
	}
	n, bytes, err := land(ctx, p.dest, p.destURL, p.dir, names)
	if err != nil {
		return err
	}
	fmt.Fprintf(p.w, "copied the export (%d files, %.0f MB) to %s\n", n, float64(bytes)/1e6, p.destURL)
	return nil
}

// land copies a pull's files (names, from dir, slash-separated) to its S3
// landing area, then manifest.json and pull.json last: a landing area
// whose pull.json is there holds the whole export. It returns how many
// files and bytes it copied.
func land(ctx context.Context, dest *s3.Store, destURL, dir string, names []string) (files int, bytes int64, err error) {
	for _, name := range append(names, "manifest.json", "pull.json") {
		n, err := copyToStore(ctx, dest, filepath.Join(dir, filepath.FromSlash(name)), name)
		if err != nil {
			return files, bytes, fmt.Errorf("copy %s to %s: %w (nothing was published; run again to copy it)", name, destURL, err)
		}
		files, bytes = files+1, bytes+n
	}
	return files, bytes, nil
}

// copyToStore streams a local file into a store as name, dropping the
// upload if it fails part-way.
func copyToStore(ctx context.Context, st catalog.Store, path, name string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	w, err := st.Create(ctx, name)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(w, f)
	if err != nil {
		if a, ok := w.(interface{ Abort() }); ok {
			a.Abort()
		} else {
			w.Close()
		}
		return n, err
	}
	return n, w.Close()
}

// storeSource reads an extract's files from a store.
type storeSource struct{ st catalog.Store }

func (s storeSource) Open(ctx context.Context, name string) (io.ReadCloser, error) {
	return s.st.Open(ctx, name)
}

// List returns the files at the top of the landing area, so that a bulk
// export's numbered parts and manifest are found there as in a folder.
func (s storeSource) List(ctx context.Context) ([]string, error) {
	all, err := s.st.List(ctx, "")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range all {
		if p != "" && !strings.Contains(p, "/") {
			out = append(out, p)
		}
	}
	return out, nil
}

var _ ingest.Lister = storeSource{}

// openS3 opens the bucket and prefix of an s3:// URL with the S3 flags.
func openS3(c *cli.Context, loc string) (*s3.Store, error) {
	bucket, prefix, err := s3.ParseURL(loc)
	if err != nil {
		return nil, err
	}
	endpoint, tls, err := s3Endpoint(c.String("s3-endpoint"), c.Bool("s3-tls"), c.IsSet("s3-tls"))
	if err != nil {
		return nil, err
	}
	if endpoint == "" {
		return nil, fmt.Errorf("%s needs --s3-endpoint (or HUB_S3_ENDPOINT, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL)", loc)
	}
	return s3.Open(c.Context, s3.Config{Endpoint: endpoint, Region: c.String("s3-region"), TLS: tls,
		AccessKey: os.Getenv("AWS_ACCESS_KEY_ID"), SecretKey: os.Getenv("AWS_SECRET_ACCESS_KEY"), Bucket: bucket, Prefix: prefix})
}

// auditPublish records a published version in the audit log of --state,
// if given: its tables' row and part counts and its provenance (hashes of
// the extract, opt-out list and policy; the key's fingerprint).
func auditPublish(c *cli.Context, m *catalog.Manifest) error {
	if c.String("state") == "" {
		return nil
	}
	gov, err := openGovernance(c)
	if err != nil {
		return err
	}
	defer gov.Close()
	type table struct {
		Rows  int64 `json:"rows"`
		Parts int   `json:"parts"`
	}
	tables := map[string]table{}
	for n, t := range m.Tables {
		tables[n] = table{t.Rows, len(t.Parts)}
	}
	data, err := json.Marshal(map[string]any{"tables": tables, "provenance": m.Provenance})
	if err != nil {
		return err
	}
	_, err = gov.Record(hostPrincipal(), governance.Entry{Action: governance.ActPublish, Dataset: m.Dataset, Version: m.Version, Data: data})
	return err
}

// s3Endpoint splits an endpoint as the aws cli spells it
// (http://127.0.0.1:9000, https://s3.example.org) into host and TLS; the
// scheme decides TLS. Without a scheme, tls (--s3-tls) does.
func s3Endpoint(endpoint string, tls, tlsSet bool) (string, bool, error) {
	if !strings.Contains(endpoint, "://") {
		return endpoint, tls, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") || u.User != nil || u.RawQuery != "" {
		return "", false, usageError{fmt.Errorf("--s3-endpoint %q: want scheme://host[:port] and nothing more", endpoint)}
	}
	var secure bool
	switch u.Scheme {
	case "https":
		secure = true
	case "http":
	default:
		return "", false, usageError{fmt.Errorf("--s3-endpoint %q: the scheme must be http or https", endpoint)}
	}
	if tlsSet && tls != secure {
		return "", false, usageError{fmt.Errorf("--s3-endpoint %q and --s3-tls=%v disagree; drop --s3-tls", endpoint, tls)}
	}
	return u.Host, secure, nil
}

// pullExtract runs (or resumes) a Bulk Data export from the FHIR server
// at base into --landing, and returns that folder as the extract. With
// --since last it asks for what changed since the dataset's last pull and
// merges that into the last pull's export (in --landing/merged).
func pullExtract(c *cli.Context, base string) (ingest.Source, pulledExport, error) {
	dir := c.String("landing")
	if dir == "" {
		return nil, pulledExport{}, usageError{fmt.Errorf("a pull from %s needs --landing DIR: the folder that keeps the raw export (the version's provenance); run again with the same folder to resume", base)}
	}
	// A pull landing in S3 downloads into a local folder first (it streams
	// through ingest and resumes from there), and its files are copied to
	// S3 once whole, before anything is published.
	var dest *s3.Store
	var destURL string
	if strings.HasPrefix(dir, "s3://") {
		cache := c.String("landing-cache")
		if cache == "" {
			return nil, pulledExport{}, usageError{fmt.Errorf("--landing %s needs --landing-cache DIR: the local folder the pull downloads into and resumes from before its files are copied to S3", dir)}
		}
		var err error
		if dest, err = openS3(c, dir); err != nil {
			return nil, pulledExport{}, err
		}
		destURL, dir = strings.TrimSuffix(dir, "/"), cache
	} else if strings.Contains(dir, "://") {
		return nil, pulledExport{}, usageError{fmt.Errorf("--landing %s: a folder or s3://bucket/prefix", dir)}
	}
	auth, err := fhirAuth(c)
	if err != nil {
		return nil, pulledExport{}, err
	}
	since, prev, err := sincePull(c, base)
	if err != nil {
		return nil, pulledExport{}, err
	}
	var progress io.Writer
	if isTerminal(os.Stderr) {
		progress = os.Stderr
	}
	cfg := bulkdata.Config{Base: base, Types: ingest.FHIRReadOrder(), Since: since, Dir: dir, Auth: auth, Progress: progress, Logger: logger(c), Ahead: c.Int("fhir-ahead")}
	if prev == "" {
		// A whole export streams through ingest as it downloads.
		s, err := bulkdata.Start(c.Context, cfg)
		if progress != nil {
			fmt.Fprint(progress, "\r\033[K")
		}
		if err != nil {
			return nil, pulledExport{}, fmt.Errorf("pull %s: %w", base, err)
		}
		folder, _ := filepath.Abs(dir)
		if dest != nil {
			folder = destURL
		}
		st := s.State()
		return pulledStream{Stream: s, w: c.App.ErrWriter, base: base, dir: dir, dest: dest, destURL: destURL},
			pulledExport{folder: folder, transactionTime: st.TransactionTime, stream: s}, nil
	}
	st, err := bulkdata.Pull(c.Context, cfg)
	if progress != nil {
		fmt.Fprint(progress, "\r\033[K")
	}
	if err != nil {
		return nil, pulledExport{}, fmt.Errorf("pull %s: %w", base, err)
	}
	fmt.Fprintf(c.App.ErrWriter, "pulled %d files of the changes since %s from %s into %s\n", len(st.Files), since, base, dir)
	if strings.HasPrefix(prev, "s3://") {
		// The last pull's export is in S3: the merge reads it from a copy
		// in the cache folder.
		local := filepath.Join(dir, "previous")
		n, err := fetchExport(c, prev, local)
		if err != nil {
			return nil, pulledExport{}, fmt.Errorf("fetch the last pull's export from %s: %w", prev, err)
		}
		fmt.Fprintf(c.App.ErrWriter, "fetched the last pull's export (%.0f MB) from %s\n", float64(n)/1e6, prev)
		prev = local
	}
	folder := filepath.Join(dir, "merged")
	dropped, err := bulkdata.Merge(c.Context, prev, dir, folder)
	if err != nil {
		return nil, pulledExport{}, fmt.Errorf("merge the changes since %s into %s: %w", since, prev, err)
	}
	fmt.Fprintf(c.App.ErrWriter, "merged the changes since %s into the last pull's export: %d resources replaced or deleted\n", since, dropped)
	abs, _ := filepath.Abs(folder)
	if dest != nil {
		// The merged export under merged/, then the changes, and
		// manifest.json and pull.json last, before anything is published.
		merged, err := os.ReadDir(folder)
		if err != nil {
			return nil, pulledExport{}, err
		}
		var names []string
		for _, e := range merged {
			names = append(names, "merged/"+e.Name())
		}
		for _, f := range st.Files {
			names = append(names, f.Name)
		}
		n, bytes, err := land(c.Context, dest, destURL, dir, names)
		if err != nil {
			return nil, pulledExport{}, err
		}
		fmt.Fprintf(c.App.ErrWriter, "copied the changes and the merged export (%d files, %.0f MB) to %s\n", n, float64(bytes)/1e6, destURL)
		abs = destURL + "/merged"
	}
	return ingest.Dir(folder), pulledExport{folder: abs, transactionTime: st.TransactionTime}, nil
}

// fetchExport copies the files at the top of an S3 landing area (a pull's
// export) into a new local folder.
func fetchExport(c *cli.Context, url, dir string) (int64, error) {
	st, err := openS3(c, url)
	if err != nil {
		return 0, err
	}
	names, err := st.List(c.Context, "")
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	var total int64
	for _, name := range names {
		if strings.Contains(name, "/") {
			continue // a merged/ folder of an incremental pull, or others
		}
		n, err := copyFromStore(c.Context, st, name, filepath.Join(dir, name))
		if err != nil {
			return total, fmt.Errorf("%s: %w", name, err)
		}
		total += n
	}
	return total, nil
}

// copyFromStore writes a store's file to a new local file.
func copyFromStore(ctx context.Context, st catalog.Store, name, path string) (int64, error) {
	r, err := st.Open(ctx, name)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// sincePull reads --since: nothing (a full pull), an instant, or "last",
// the transactionTime of the dataset's latest version's pull. For "last"
// it also returns the folder that version was ingested from, which the
// changes are merged into.
func sincePull(c *cli.Context, base string) (since, prev string, err error) {
	since = c.String("since")
	if since == "" {
		return "", "", nil
	}
	if since != "last" {
		if _, err := time.Parse(time.RFC3339, since); err != nil {
			return "", "", usageError{fmt.Errorf("--since %q: want last, or an instant such as 2026-11-30T00:00:00Z", since)}
		}
		return since, "", nil
	}
	name := c.String("dataset")
	if name == "" {
		return "", "", usageError{errors.New("--since last needs --dataset: the dataset whose last pull to continue")}
	}
	lake, err := openLake(c)
	if err != nil {
		return "", "", err
	}
	m, err := lake.Manifest(c.Context, name, 0) // the latest
	if errors.Is(err, catalog.ErrNotFound) {
		return "", "", fmt.Errorf("--since last: %s has no version yet; pull it whole first (without --since)", name)
	}
	if err != nil {
		return "", "", err
	}
	p := m.Provenance
	if p.TransactionTime == "" || p.ExtractFolder == "" || p.ExtractSource != base {
		return "", "", fmt.Errorf("--since last: %s@%d was not pulled from %s; pull it whole first (without --since)", name, m.Version, base)
	}
	if strings.HasPrefix(p.ExtractFolder, "s3://") {
		st, err := openS3(c, p.ExtractFolder)
		if err != nil {
			return "", "", err
		}
		if names, err := st.List(c.Context, ""); err != nil || len(names) == 0 {
			return "", "", fmt.Errorf("--since last: the export %s@%d was read from is gone from %s (%v); pull it whole again", name, m.Version, p.ExtractFolder, err)
		}
	} else if _, err := os.Stat(p.ExtractFolder); err != nil {
		return "", "", fmt.Errorf("--since last: the export %s@%d was read from is gone (%w); pull it whole again", name, m.Version, err)
	}
	return p.TransactionTime, p.ExtractFolder, nil
}

// publisher names the account and host running a publish, for the
// manifest: the lake records who published even without --state.
func publisher() string {
	name := "unknown"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		name += "@" + h
	}
	return name
}
