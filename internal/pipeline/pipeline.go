// Package pipeline runs ingest → deid → publish as one stream: the
// identifiable batches ingest makes are de-identified in memory and only
// de-identified Parquet parts reach the lake; the manifest, written last,
// makes the version visible.
package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/catalog/icelake"
	"github.com/nhs-hub/hub/cohorts/enginetables"
	"github.com/nhs-hub/hub/deid"
	"github.com/nhs-hub/hub/ingest"
)

// Config is one run of the pipeline.
type Config struct {
	Dataset    string
	Source     ingest.Source
	SourceName string // for provenance: the folder, s3:// prefix or FHIR server
	// For a pulled export: the folder read and its transactionTime.
	ExtractFolder, TransactionTime string
	// PublishedBy names who ran the publish (an account and host).
	PublishedBy string
	Ingest      ingest.Options
	OptOutDate  string
	Policy      deid.Policy
	Key         *deid.Key
	Lake        *catalog.Lake
	// LakeLocation is the lake's location as other engines reach it (an
	// absolute folder, or s3://bucket/prefix): when set, every table of
	// the version is registered as an Iceberg table before the manifest
	// commits (package icelake), with IcebergProps for its file IO.
	LakeLocation string
	IcebergProps map[string]string
	Logger       *slog.Logger
	// EngineTables writes the cohort engine's tables beside the version's
	// (engine/, listed in the manifest's engine_tables): the work an
	// engine did when it loaded the version (an integer patient key,
	// events sorted by code) done once at publish, for any engine to read
	// as it is. TempDir holds the work (os.TempDir() when "").
	EngineTables bool
	TempDir      string

	// The safety checks (see [Check]): the opt-out list's maximum age
	// (0: DefaultOptOutMaxAge) and the largest share of a table that may
	// be quarantined (0: DefaultMaxQuarantine), and the checks the
	// operator chose to pass by. Now, when set, is the clock.
	OptOutMaxAge  time.Duration
	MaxQuarantine float64
	Overrides     []Check
	Now           func() time.Time
}

// Result is what a run published.
type Result struct {
	Manifest *catalog.Manifest
	Ingest   *ingest.Report
	Deid     *deid.Report
}

// Run ingests, de-identifies and publishes one dataset version. On any
// error nothing is committed. A failed safety check returns a
// [RefusedError] (with the reports, when ingest ran) and leaves nothing in
// the lake; after other errors the claimed version's files are left for
// `hub catalog gc`.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if !catalog.ValidName(cfg.Dataset) {
		return nil, fmt.Errorf("invalid dataset name %q: use lower-case letters, digits, - and _", cfg.Dataset)
	}
	g := newGuard(&cfg)
	if err := g.optOuts(cfg.Ingest.OptOuts, cfg.OptOutDate); err != nil {
		return nil, err
	}
	pub, err := cfg.Lake.Begin(ctx, cfg.Dataset)
	if err != nil {
		return nil, err
	}
	d, err := deid.New(ctx, cfg.Policy, cfg.Key, pub, cfg.Ingest.Allocator, cfg.Logger)
	if err != nil {
		return nil, err
	}
	irep, err := ingest.Run(ctx, cfg.Source, cfg.Ingest, d.Emit)
	if err != nil {
		d.Abort()
		return nil, err
	}
	drep, err := d.Close()
	if err != nil {
		d.Abort()
		return nil, err
	}
	if err := g.output(ctx, cfg.Lake, cfg.Dataset, irep); err != nil {
		if aerr := pub.Abandon(ctx); aerr != nil {
			err = errors.Join(err, aerr)
		}
		return &Result{Ingest: irep, Deid: drep}, err
	}
	m := &catalog.Manifest{Tables: map[string]*catalog.TableManifest{}, Reports: map[string]json.RawMessage{}}
	for t, s := range d.Schemas() {
		m.Tables[t.String()] = &catalog.TableManifest{Rows: drep.Rows[t.String()], Schema: columns(s)}
		if got, want := drep.Rows[t.String()], irep.Tables[t.String()].Kept; got != want {
			return nil, fmt.Errorf("%s: wrote %d rows but ingest kept %d; not publishing", t, got, want)
		}
	}
	m.Provenance = catalog.Provenance{
		ExtractFormat: irep.Format, ExtractSource: cfg.SourceName, ExtractIdentity: irep.Identity(),
		ExtractFolder: cfg.ExtractFolder, TransactionTime: cfg.TransactionTime, PublishedBy: cfg.PublishedBy,
		OptOutSHA256: irep.OptOuts.SHA256, OptOutDate: cfg.OptOutDate,
		PolicyHash: drep.PolicyHash, PseudonymDomain: drep.Domain, KeyFingerprint: drep.KeyFingerprint,
		Overrides: g.passed,
	}
	if m.Provenance.KeyVersion, err = cfg.Lake.KeyVersion(ctx, cfg.Dataset, drep.KeyFingerprint); err != nil {
		return nil, err
	}
	if m.Reports["ingest"], err = json.Marshal(irep); err != nil {
		return nil, err
	}
	if m.Reports["deid"], err = json.Marshal(drep); err != nil {
		return nil, err
	}
	if cfg.EngineTables {
		start := time.Now()
		if err := writeEngineTables(ctx, cfg, pub, m); err != nil {
			if aerr := pub.Abandon(ctx); aerr != nil {
				err = errors.Join(err, aerr)
			}
			return nil, err
		}
		cfg.Logger.Info("engine tables written", "tables", len(m.EngineTables), "seconds", time.Since(start).Seconds())
	}
	if cfg.LakeLocation != "" {
		start := time.Now()
		parts := pub.Parts()
		for t, tm := range m.EngineTables {
			for _, p := range tm.Parts {
				parts[engineIceberg+t] = append(parts[engineIceberg+t], p.Path)
			}
		}
		locs, err := icelake.Register(ctx, cfg.LakeLocation, pub.Prefix(), parts, cfg.IcebergProps)
		if err != nil {
			if aerr := pub.Abandon(ctx); aerr != nil {
				err = errors.Join(err, aerr)
			}
			return nil, err
		}
		for t, loc := range locs {
			if e, ok := strings.CutPrefix(t, engineIceberg); ok {
				m.EngineTables[e].Iceberg = loc
			} else {
				m.Tables[t].Iceberg = loc
			}
		}
		if m.IcebergFiles, err = pub.Checksums(ctx, "iceberg/"); err != nil {
			return nil, err
		}
		cfg.Logger.Info("iceberg tables registered", "tables", len(locs), "seconds", time.Since(start).Seconds())
	}
	if err := pub.Commit(ctx, m); err != nil {
		return nil, err
	}
	cfg.Logger.Info("published", "dataset", cfg.Dataset, "version", m.Version)
	return &Result{Manifest: m, Ingest: irep, Deid: drep}, nil
}

// columns is the data dictionary of a schema.
func columns(s *arrow.Schema) []catalog.Column {
	out := make([]catalog.Column, 0, s.NumFields())
	for _, f := range s.Fields() {
		desc, _ := f.Metadata.GetValue("description")
		out = append(out, catalog.Column{Name: f.Name, Type: f.Type.String(), Nullable: f.Nullable, Description: desc})
	}
	return out
}

// engineIceberg prefixes the Iceberg names of the engine tables
// (engine_conditions).
const engineIceberg = "engine_"

// writeEngineTables writes the version's engine tables into its folder
// (engine/TABLE.parquet) and lists them in m, from the parts just
// written: where they lie on a local lake, fetched into cfg.TempDir from
// any other. The version's creation time is fixed first: age bands are at
// its reference month, which the tables' birth spans depend on.
func writeEngineTables(ctx context.Context, cfg Config, pub *catalog.Publication, m *catalog.Manifest) error {
	m.Created = time.Now().UTC()
	dir, err := os.MkdirTemp(cfg.TempDir, "hub-engine-tables-")
	if err != nil {
		return fmt.Errorf("engine tables: %w", err)
	}
	defer os.RemoveAll(dir)
	files, err := pub.Local(ctx, dir)
	if err != nil {
		return fmt.Errorf("engine tables: %w", err)
	}
	// De-identification's memory is garbage now: hand it back before
	// DuckDB takes its own, or the two add up in the peak.
	debug.FreeOSMemory()
	written, err := enginetables.Write(ctx, m, files, dir, "auto")
	if err != nil {
		return err
	}
	m.EngineTables = map[string]*catalog.TableManifest{}
	for name, w := range written {
		part, err := pub.Add(ctx, "engine/"+name+".parquet", w.Path)
		if err != nil {
			return fmt.Errorf("engine table %s: %w", name, err)
		}
		m.EngineTables[name] = &catalog.TableManifest{Rows: w.Rows, Parts: []catalog.Part{part}, Schema: w.Schema}
	}
	return nil
}
