package ingest

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// A Lister is a Source that can list its files. Ingest then finds tables
// split into numbered parts, as Bulk Data servers write them, and reads
// the export's manifest.json; without one it looks for the plain names.
type Lister interface {
	// List returns the names of the files at the top of the source.
	List(ctx context.Context) ([]string, error)
}

// List returns the regular files of the folder.
func (d Dir) List(_ context.Context) ([]string, error) {
	entries, err := os.ReadDir(string(d))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if e.Type().IsRegular() {
			out = append(out, e.Name())
			continue
		}
		if e.Type()&fs.ModeSymlink != 0 {
			if st, err := os.Stat(filepath.Join(string(d), e.Name())); err == nil && st.Mode().IsRegular() {
				out = append(out, e.Name())
			}
		}
	}
	return out, nil
}

var _ Lister = Dir("")

// A Finisher is a Source still arriving while ingest reads it: a Bulk
// Data pull streamed through ingest. When the run has read every table it
// calls Finish, which waits for the files the run did not read and says
// whether the whole source arrived; the run fails (and so publishes
// nothing) if it did not.
type Finisher interface {
	Finish(ctx context.Context) error
}

// A tableFile is one file of a table: a CSV file, or the NDJSON file of
// one resource type.
type tableFile struct {
	name     string
	resource string // FHIR resource type; "" for CSV
}

// extractFiles is what an extract holds, by table.
type extractFiles struct {
	format      Format
	tables      [len(columns)][]tableFile
	medications []string            // FHIR Medication files, for medicationReference
	notIngested map[string][]string // FHIR resource type → its files
	otherFiles  []string            // files that are neither
	manifest    bool
}

// partName matches the file names Bulk Data servers and LHCRE platforms
// give a table's parts: Patient.ndjson, Patient.000.ndjson,
// Patient-1.ndjson.gz, 1.Patient.ndjson, patients.csv, patients_2.csv.
var partName = regexp.MustCompile(`^(?:(\d+)[._-])?([A-Za-z][A-Za-z_]*?)(?:[._-](\d+))?\.(csv|ndjson)(\.gz)?$`)

type part struct {
	name, base, ext string
	lead, trail     int
}

func parsePart(name string) (part, bool) {
	m := partName.FindStringSubmatch(name)
	if m == nil {
		return part{}, false
	}
	p := part{name: name, base: m[2], ext: m[4], lead: -1, trail: -1}
	if m[1] != "" {
		p.lead, _ = strconv.Atoi(m[1])
	}
	if m[3] != "" {
		p.trail, _ = strconv.Atoi(m[3])
	}
	return p, true
}

// tableByCSVName and tableByResource find a table by file base name.
func tableByCSVName(base string) (Table, bool) {
	for _, t := range Tables {
		if strings.EqualFold(base, t.String()) {
			return t, true
		}
	}
	return 0, false
}

func tableByResource(typ string) (Table, bool) {
	for _, t := range Tables {
		if slices.Contains(fhirTypes[t], typ) {
			return t, true
		}
	}
	return 0, false
}

// isResourceType reports whether s is shaped like a FHIR resource type.
func isResourceType(s string) bool {
	if s == "" || s[0] < 'A' || s[0] > 'Z' {
		return false
	}
	for _, c := range s {
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z') {
			return false
		}
	}
	return true
}

// bulkManifest is the part of a Bulk Data export manifest ingest reads.
type bulkManifest struct {
	TransactionTime string `json:"transactionTime"`
	Output          []struct {
		Type  string `json:"type"`
		URL   string `json:"url"`
		Count *int64 `json:"count"`
	} `json:"output"`
}

// maxManifest bounds manifest.json.
const maxManifest = 64 << 20

// findFiles finds the extract's tables.
func findFiles(ctx context.Context, src Source) (*extractFiles, error) {
	l, ok := src.(Lister)
	if !ok {
		return probeFiles(ctx, src)
	}
	names, err := l.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list the extract: %w", err)
	}
	ef := &extractFiles{notIngested: map[string][]string{}}
	if slices.Contains(names, "manifest.json") {
		if names, err = manifestFiles(ctx, src, names); err != nil {
			return nil, err
		}
		ef.manifest = true
	}
	var csvParts, fhirParts []part
	for _, n := range names {
		p, ok := parsePart(n)
		switch {
		case !ok:
			if n != "manifest.json" {
				ef.otherFiles = append(ef.otherFiles, n)
			}
		case p.ext == "csv":
			csvParts = append(csvParts, p)
		default:
			fhirParts = append(fhirParts, p)
		}
	}
	if len(csvParts) > 0 && len(fhirParts) > 0 {
		return nil, fmt.Errorf("the extract mixes CSV and NDJSON files; give one format a folder")
	}
	parts, format := csvParts, CSV
	if len(fhirParts) > 0 {
		parts, format = fhirParts, FHIR
	}
	ef.format = format
	slices.SortFunc(parts, func(a, b part) int {
		return cmp.Or(cmp.Compare(a.lead, b.lead), cmp.Compare(a.trail, b.trail), cmp.Compare(a.name, b.name))
	})
	for _, p := range parts {
		if format == CSV {
			if t, ok := tableByCSVName(p.base); ok {
				ef.tables[t] = append(ef.tables[t], tableFile{name: p.name})
			} else {
				ef.otherFiles = append(ef.otherFiles, p.name)
			}
			continue
		}
		switch t, ok := tableByResource(p.base); {
		case ok:
			ef.tables[t] = append(ef.tables[t], tableFile{name: p.name, resource: p.base})
		case p.base == "Medication":
			ef.medications = append(ef.medications, p.name)
		case isResourceType(p.base):
			ef.notIngested[p.base] = append(ef.notIngested[p.base], p.name)
		default:
			ef.otherFiles = append(ef.otherFiles, p.name)
		}
	}
	if len(ef.tables[Patients]) == 0 {
		return nil, ErrNoExtract
	}
	if format == CSV {
		for _, t := range Tables {
			if csvRequired[t] && len(ef.tables[t]) == 0 {
				return nil, fmt.Errorf("the csv extract lacks its %s table (%s.csv or %s.csv.gz)", t, t, t)
			}
		}
	}
	return ef, nil
}

// manifestFiles reads the export's manifest.json and returns the names of
// the files it lists, each of which must be in the extract: a manifest
// names the whole export, so a missing file is a partial download.
func manifestFiles(ctx context.Context, src Source, present []string) ([]string, error) {
	f, err := src.Open(ctx, "manifest.json")
	if err != nil {
		return nil, fmt.Errorf("open manifest.json: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxManifest+1))
	if err != nil {
		return nil, fmt.Errorf("read manifest.json: %w", err)
	}
	if len(data) > maxManifest {
		return nil, fmt.Errorf("manifest.json is over %d MiB", maxManifest>>20)
	}
	var m bulkManifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("manifest.json is not a Bulk Data manifest: %w", err)
	}
	var types, urls []string
	for _, o := range m.Output {
		types, urls = append(types, o.Type), append(urls, o.URL)
	}
	names, err := BulkFileNames(types, urls)
	if err != nil {
		return nil, fmt.Errorf("manifest.json: %w", err)
	}
	var out []string
	for i, o := range m.Output {
		name := names[i]
		switch {
		case slices.Contains(present, name):
		case slices.Contains(present, name+".gz"):
			name += ".gz"
		default:
			return nil, fmt.Errorf("manifest.json lists %s (%s), which the extract lacks: the download is incomplete", name, o.Type)
		}
		out = append(out, name)
	}
	for _, n := range present {
		if !slices.Contains(out, n) && n != "manifest.json" {
			out = append(out, n) // reported as not ingested or other
		}
	}
	return out, nil
}

// PartOf returns the FHIR resource type of an NDJSON part's file name
// (Patient.000.ndjson, Patient-1.ndjson.gz, 1.Patient.ndjson, ...) and its
// place among the type's parts, and false for any other name.
func PartOf(name string) (typ string, lead, trail int, ok bool) {
	p, ok := parsePart(name)
	if !ok || p.ext != "ndjson" || !isResourceType(p.base) {
		return "", 0, 0, false
	}
	return p.base, p.lead, p.trail, true
}

// BulkFileNames are the names under which a download keeps the output
// files of a Bulk Data manifest, given their resource types and URLs:
// each URL's own name when it is a part name of its type
// (Patient.000.ndjson), else TYPE.K.ndjson for output K (servers may
// serve files by opaque URLs); and TYPE.K.ndjson for all of them if two
// would share a name. Ingest looks for the files of a manifest.json by
// these names.
func BulkFileNames(types, urls []string) ([]string, error) {
	names := make([]string, len(types))
	seen := map[string]bool{}
	clash := false
	for i, typ := range types {
		u, err := url.Parse(urls[i])
		if err != nil || urls[i] == "" {
			return nil, fmt.Errorf("output %d: no usable url", i)
		}
		if !isResourceType(typ) {
			return nil, fmt.Errorf("output %d: type %q is not a resource type", i, typ)
		}
		names[i] = fmt.Sprintf("%s.%03d.ndjson", typ, i)
		if p, ok := parsePart(path.Base(u.Path)); ok && p.base == typ {
			names[i] = p.name
		}
		clash = clash || seen[names[i]]
		seen[names[i]] = true
	}
	if clash {
		for i, typ := range types {
			names[i] = fmt.Sprintf("%s.%03d.ndjson", typ, i)
		}
	}
	return names, nil
}

// probeFiles finds the tables of a source that cannot list its files by
// their plain names.
func probeFiles(ctx context.Context, src Source) (*extractFiles, error) {
	exists := func(name string) (bool, error) {
		f, err := src.Open(ctx, name)
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("open %s: %w", name, err)
		}
		f.Close()
		return true, nil
	}
	for _, format := range []Format{CSV, FHIR} {
		ef := &extractFiles{format: format, notIngested: map[string][]string{}}
		for _, t := range Tables {
			bases := []string{t.String() + ".csv"}
			if format == FHIR {
				bases = nil
				for _, r := range fhirTypes[t] {
					bases = append(bases, r+".ndjson")
				}
			}
			for _, base := range bases {
				for _, name := range []string{base, base + ".gz"} {
					ok, err := exists(name)
					if err != nil {
						return nil, err
					}
					if ok {
						ef.tables[t] = append(ef.tables[t], tableFile{name: name, resource: strings.TrimSuffix(base, ".ndjson")})
						break
					}
				}
			}
			if format == CSV {
				for i := range ef.tables[t] {
					ef.tables[t][i].resource = ""
				}
			}
		}
		if len(ef.tables[Patients]) == 0 {
			continue
		}
		if format == CSV {
			for _, t := range Tables {
				if csvRequired[t] && len(ef.tables[t]) == 0 {
					return nil, fmt.Errorf("the csv extract lacks its %s table (%s.csv or %s.csv.gz)", t, t, t)
				}
			}
		}
		for _, name := range []string{"Medication.ndjson", "Medication.ndjson.gz"} {
			if ok, _ := exists(name); ok && format == FHIR {
				ef.medications = append(ef.medications, name)
			}
		}
		return ef, nil
	}
	return nil, ErrNoExtract
}

// countResources counts the non-blank lines of an NDJSON file that ingest
// does not read, for the report.
func countResources(ctx context.Context, src Source, name string) (int64, error) {
	rc, err := src.Open(ctx, name)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", name, err)
	}
	defer rc.Close()
	stream, _, err := openStream(rc, strings.HasSuffix(name, ".gz"), false)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	buf := make([]byte, 1<<20)
	var n int64
	var last byte = '\n'
	blank := true
	for {
		k, err := stream.Read(buf)
		for _, c := range buf[:k] {
			if c == '\n' {
				if !blank {
					n++
				}
				blank = true
			} else if c != ' ' && c != '\r' && c != '\t' {
				blank = false
			}
		}
		if k > 0 {
			last = buf[k-1]
		}
		if err == io.EOF {
			if !blank && last != '\n' {
				n++
			}
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("read %s: %w", name, err)
		}
		if err := ctx.Err(); err != nil {
			return n, err
		}
	}
}
