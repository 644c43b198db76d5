package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/cohorts"
	"github.com/nhs-hub/hub/deid"
	"github.com/urfave/cli/v2"
)

// hubConfig is the hub's configuration file: who publishes its catalog.
type hubConfig struct {
	Publisher string `json:"publisher"`
	Contact   string `json:"contact"`
	BaseURL   string `json:"base_url"`
	Licence   string `json:"licence"`
}

// applyConfig sets the flags the configuration file (--config, if it
// exists) gives and the command line does not.
func applyConfig(c *cli.Context) error {
	raw, err := os.ReadFile(c.String("config"))
	if errors.Is(err, fs.ErrNotExist) && !c.IsSet("config") {
		return nil
	}
	if err != nil {
		return fmt.Errorf("configuration file: %w", err)
	}
	var cfg hubConfig
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return fmt.Errorf("configuration file %s: %w (it holds publisher, contact, base_url and licence)", c.String("config"), err)
	}
	for flag, v := range map[string]string{"publisher": cfg.Publisher, "contact": cfg.Contact, "base-url": cfg.BaseURL, "licence": cfg.Licence} {
		if v != "" && !c.IsSet(flag) {
			if err := c.Set(flag, v); err != nil {
				return err
			}
		}
	}
	return nil
}

func catalogCommand() *cli.Command {
	lake := append([]cli.Flag{&cli.StringFlag{Name: "lake", Value: "./lake", EnvVars: []string{"HUB_LAKE"}, Usage: "the lake: a local folder or s3://bucket/prefix"}}, s3Flags()...)
	with := func(more ...cli.Flag) []cli.Flag { return append(append([]cli.Flag{}, lake...), more...) }
	jsonFlag := &cli.BoolFlag{Name: "json", Usage: "print JSON"}
	return &cli.Command{
		Name:  "catalog",
		Usage: "list, describe, verify and clean the lake's datasets",
		Subcommands: []*cli.Command{
			{
				Name: "list", Usage: "list datasets and their versions, and the code lists queries may name", Flags: with(jsonFlag, stateFlag()),
				Description: "With --json it prints {\"datasets\": [...], \"codelists\": [...]}; the code lists are the server\n" +
					"state folder's (`hub codelist import`), none when the folder does not exist.",
				Action: func(c *cli.Context) error {
					lake, err := openLake(c)
					if err != nil {
						return err
					}
					names, err := lake.Datasets(c.Context)
					if err != nil {
						return err
					}
					type entry struct {
						Name     string `json:"name"`
						Versions []int  `json:"versions"`
						Latest   int    `json:"latest"`
						Created  string `json:"created"`
						Patients int64  `json:"patients"`
					}
					var out []entry
					for _, n := range names {
						vs, err := lake.Versions(c.Context, n)
						if err != nil {
							return err
						}
						m, err := lake.Manifest(c.Context, n, vs[len(vs)-1]) // Datasets lists only names with a version
						if err != nil {
							return err
						}
						out = append(out, entry{Name: n, Versions: vs, Latest: m.Version, Created: m.Created.Format(time.RFC3339), Patients: m.Tables["patients"].Rows})
					}
					lists := []cohorts.Codelist{}
					if _, err := os.Stat(codelistDir(c)); err == nil {
						store, err := cohorts.OpenCodelists(codelistDir(c))
						if err != nil {
							return err
						}
						if lists, err = store.List(); err != nil {
							return err
						}
					}
					if c.Bool("json") {
						return writeJSON(c.App.Writer, map[string]any{"datasets": out, "codelists": lists})
					}
					tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
					if len(out) == 0 {
						fmt.Fprintf(tw, "no datasets in %s; publish one with `hub ingest --dataset NAME ...`\n", c.String("lake"))
					} else {
						fmt.Fprintln(tw, "DATASET\tLATEST\tVERSIONS\tPATIENTS\tCREATED")
						for _, e := range out {
							fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\n", e.Name, e.Latest, len(e.Versions), e.Patients, e.Created)
						}
					}
					if len(lists) > 0 {
						fmt.Fprintln(tw, "\nCODE LIST\tSYSTEM\tCODES\tSHA-256\tSOURCE\tIMPORTED")
						for _, l := range lists {
							fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", l.Ref(), l.System, l.Count, l.SHA256[:12], l.Source, l.Imported.Format(time.DateOnly))
						}
					}
					return tw.Flush()
				},
			},
			{
				Name: "show", Usage: "show a dataset version: tables, data dictionary, row counts, provenance", ArgsUsage: "NAME[@VERSION]",
				Flags: with(jsonFlag, &cli.BoolFlag{Name: "verify", Usage: "also check every part's SHA-256"}),
				Action: func(c *cli.Context) error {
					lake, m, err := manifestArg(c)
					if err != nil {
						return err
					}
					if c.Bool("verify") {
						if err := lake.Verify(c.Context, m); err != nil {
							return err
						}
					}
					if c.Bool("json") {
						return writeJSON(c.App.Writer, m)
					}
					root, err := lakeRoot(c)
					if err != nil {
						return err
					}
					return showManifest(c.App.Writer, m, c.Bool("verify"), root)
				},
			},
			{
				Name: "verify", Usage: "check every part of a version against its manifest", ArgsUsage: "NAME[@VERSION]",
				Flags: with(),
				Action: func(c *cli.Context) error {
					lake, m, err := manifestArg(c)
					if err != nil {
						return err
					}
					if err := lake.Verify(c.Context, m); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "%s@%d: every part matches its manifest\n", m.Dataset, m.Version)
					return nil
				},
			},
			{
				Name: "export", Usage: "export a version's metadata for the HDR UK Gateway (hdruk) or as DCAT 3 (dcat)", ArgsUsage: "NAME[@VERSION]",
				Flags: with(&cli.StringFlag{Name: "format", Value: "hdruk", Usage: "hdruk or dcat"},
					&cli.StringFlag{Name: "publisher", Value: "Digital Innovation Hub", EnvVars: []string{"HUB_PUBLISHER"}, Usage: "publisher named in the metadata"},
					&cli.StringFlag{Name: "base-url", EnvVars: []string{"HUB_BASE_URL"}, Usage: "the hub's public address (https://hub.example.nhs.uk), from which the dataset's IRIs and HDR UK identifier are made (needed by dcat)"},
					&cli.StringFlag{Name: "contact", EnvVars: []string{"HUB_CONTACT"}, Usage: "the data controller's contact e-mail address (needed by dcat)"},
					&cli.StringFlag{Name: "licence", EnvVars: []string{"HUB_LICENCE"}, Usage: "with dcat: the IRI of the terms of use (default: BASE-URL/register#terms)"},
					&cli.StringFlag{Name: "hdruk-version", Value: catalog.HDRUKVersions[0], Usage: "with hdruk: the HDR UK Gateway dataset schema, " + strings.Join(catalog.HDRUKVersions, " or ")},
					&cli.StringFlag{Name: "config", Value: "hub.json", EnvVars: []string{"HUB_CONFIG"}, Usage: "the hub's configuration file: {\"publisher\", \"contact\", \"base_url\", \"licence\"}, each overridden by its flag (read if it exists)"}),
				Description: "The catalog's publisher, contact, base URL and licence come from the hub's configuration file\n" +
					"(--config, default ./hub.json) or their flags, which win. Example hub.json:\n\n" +
					"  {\"publisher\": \"Yorkshire and Humber Digital Innovation Hub\", \"contact\": \"dpo@example.nhs.uk\",\n" +
					"   \"base_url\": \"https://hub.example.nhs.uk\"}",
				Action: func(c *cli.Context) error {
					_, m, err := manifestArg(c)
					if err != nil {
						return err
					}
					if err := applyConfig(c); err != nil {
						return err
					}
					lakeURL, err := lakeRoot(c)
					if err != nil {
						return err
					}
					if !strings.HasPrefix(lakeURL, "s3://") {
						lakeURL = (&url.URL{Scheme: "file", Path: filepath.ToSlash(lakeURL)}).String()
					}
					licence := c.String("licence")
					if licence == "" && c.String("base-url") != "" {
						licence = strings.TrimRight(c.String("base-url"), "/") + "/register#terms"
					}
					out, err := catalog.Export(m, c.String("format"), catalog.ExportOptions{Publisher: c.String("publisher"),
						BaseURL: c.String("base-url"), LakeURL: lakeURL, Contact: c.String("contact"), Licence: licence, HDRUKVersion: c.String("hdruk-version")})
					if err != nil {
						return usageError{err}
					}
					if err != nil {
						return err
					}
					_, err = fmt.Fprintf(c.App.Writer, "%s\n", out)
					return err
				},
			},
			{
				Name: "gc", Usage: "remove the parts of versions that were never committed", ArgsUsage: "NAME",
				Flags: with(jsonFlag, &cli.DurationFlag{Name: "min-age", Value: time.Hour, Usage: "leave alone versions claimed more recently (a publish may be running)"}),
				Action: func(c *cli.Context) error {
					lake, err := openLake(c)
					if err != nil {
						return err
					}
					if err := args(c, 1); err != nil {
						return err
					}
					if !catalog.ValidName(c.Args().First()) {
						return fmt.Errorf("usage: hub catalog gc NAME")
					}
					removed, err := lake.GC(c.Context, c.Args().First(), c.Duration("min-age"))
					if err != nil {
						return err
					}
					if c.Bool("json") {
						if removed == nil {
							removed = []string{}
						}
						return writeJSON(c.App.Writer, map[string]any{"dataset": c.Args().First(), "removed": removed})
					}
					fmt.Fprintf(c.App.Writer, "removed %d orphaned objects\n", len(removed))
					return nil
				},
			},
		},
	}
}

// manifestArg opens the lake and reads the manifest named by NAME[@VERSION].
func manifestArg(c *cli.Context) (*catalog.Lake, *catalog.Manifest, error) {
	if err := args(c, 1); err != nil {
		return nil, nil, err
	}
	arg := c.Args().First()
	name, ver, hasVer := strings.Cut(arg, "@")
	if !catalog.ValidName(name) {
		return nil, nil, fmt.Errorf("usage: hub catalog %s NAME[@VERSION]", c.Command.Name)
	}
	v := 0
	if hasVer {
		var err error
		if v, err = strconv.Atoi(ver); err != nil || v < 1 {
			return nil, nil, fmt.Errorf("version must be a positive number")
		}
	}
	lake, err := openLake(c)
	if err != nil {
		return nil, nil, err
	}
	m, err := lake.Manifest(c.Context, name, v)
	if err != nil {
		return nil, nil, fmt.Errorf("%w (see `hub catalog list`)", err)
	}
	return lake, m, nil
}

func showManifest(w io.Writer, m *catalog.Manifest, verified bool, root string) error {
	p := m.Provenance
	fmt.Fprintf(w, "%s@%d, published %s\n\n", m.Dataset, m.Version, m.Created.Format(time.RFC3339))
	key := p.KeyFingerprint
	if p.KeyVersion > 0 {
		key = fmt.Sprintf("version %d, fingerprint %s", p.KeyVersion, p.KeyFingerprint)
	}
	fmt.Fprintf(w, "Provenance\n  extract: %s from %s (identity %s)\n  opt-out list: sha256 %s, dated %s\n  de-identification policy: sha256 %s\n  pseudonyms: domain %s, key %s\n",
		p.ExtractFormat, p.ExtractSource, short(p.ExtractIdentity), short(p.OptOutSHA256), p.OptOutDate, short(p.PolicyHash), p.PseudonymDomain, key)
	if p.PublishedBy != "" {
		fmt.Fprintf(w, "  published by: %s\n", p.PublishedBy)
	}
	if len(p.Overrides) > 0 {
		fmt.Fprintf(w, "  safety checks passed by with --override: %s\n", strings.Join(p.Overrides, ", "))
	}
	if p.TransactionTime != "" {
		fmt.Fprintf(w, "  pulled: transaction time %s, read from %s\n", p.TransactionTime, p.ExtractFolder)
	}
	if verified {
		fmt.Fprintln(w, "  checksums: every part verified")
	}
	for _, t := range []string{"patients", "encounters", "conditions", "medications", "observations"} {
		tm := m.Tables[t]
		if tm == nil {
			continue
		}
		var size int64
		for _, part := range tm.Parts {
			size += part.Size
		}
		fmt.Fprintf(w, "\n%s: %d rows in %d part(s), %.1f MB\n", t, tm.Rows, len(tm.Parts), float64(size)/1e6)
		if tm.Iceberg != "" {
			fmt.Fprintf(w, "  Iceberg table: %s/%s\n", root, tm.Iceberg)
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, col := range tm.Schema {
			null := ""
			if col.Nullable {
				null = "null"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", col.Name, col.Type, null, col.Description)
		}
		tw.Flush()
	}
	if len(m.EngineTables) > 0 {
		fmt.Fprintln(w, "\nengine tables (engine/: an integer patient key pid, events sorted by code; what hub serve loads and other engines read as they are):")
		for _, t := range slices.Sorted(maps.Keys(m.EngineTables)) {
			tm := m.EngineTables[t]
			var size int64
			for _, part := range tm.Parts {
				size += part.Size
			}
			fmt.Fprintf(w, "  %s: %d rows, %.1f MB", t, tm.Rows, float64(size)/1e6)
			if tm.Iceberg != "" {
				fmt.Fprintf(w, "; Iceberg table: %s/%s", root, tm.Iceberg)
			}
			fmt.Fprintln(w)
		}
	}
	if raw, ok := m.Reports["deid"]; ok {
		var d struct {
			KAnonymity deid.KAnonymity `json:"k_anonymity"`
		}
		if json.Unmarshal(raw, &d) == nil {
			fmt.Fprintf(w, "\n%s\n", d.KAnonymity.Summary())
		}
	}
	return nil
}

func short(s string) string {
	if len(s) > 16 {
		return s[:16] + "…"
	}
	return s
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
