package cohorts

import (
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/nhs-hub/hub/ingest"
)

// A Codelist is a named, versioned list of codes of one coding system, as
// OpenCodelists publishes them: criteria name it ("codelist":
// "nhsd/dmtype2_cod@20250912") instead of listing its codes. A version
// never changes once stored, so a query's hash covers the codes it used.
type Codelist struct {
	Name    string   `json:"name"`    // owner/list, e.g. "opensafely/asthma-diagnosis"
	Version string   `json:"version"` // e.g. "2020-04-15"
	System  string   `json:"system"`  // snomed, icd10 or dmd
	Codes   []string `json:"codes,omitempty"`
	// Count is the number of codes, in List (which leaves Codes out).
	Count int `json:"count,omitempty"`
	// SHA256 is the hash of the codes (sorted, one a line): what a
	// response cites.
	SHA256   string    `json:"sha256"`
	Source   string    `json:"source,omitempty"` // where it was imported from
	Imported time.Time `json:"imported"`
}

// Ref is the list's name@version, as criteria name it.
func (c *Codelist) Ref() string { return c.Name + "@" + c.Version }

// Coding systems of code lists.
const (
	SystemSNOMED = "snomed"
	SystemICD10  = "icd10"
	SystemDMD    = "dmd"
)

// MaxCodelistCodes bounds a code list (OpenCodelists' largest clinical
// lists hold a few thousand codes).
const MaxCodelistCodes = 10000

var (
	reCodelistName    = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}(/[a-z0-9][a-z0-9._-]{0,63}){1,3}$`)
	reCodelistVersion = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$`)
)

// ParseCodelistRef splits name@version, checking both.
func ParseCodelistRef(ref string) (name, version string, err error) {
	name, version, ok := strings.Cut(ref, "@")
	if !ok || !reCodelistName.MatchString(name) || !reCodelistVersion.MatchString(version) {
		return "", "", fmt.Errorf("%q is not a code list reference such as \"opensafely/asthma-diagnosis@2020-04-15\" (owner/name@version)", clip(ref))
	}
	return name, version, nil
}

// ParseOpenCodelistsCSV reads a code list in OpenCodelists' CSV download
// format: a header row, then a row a code. The codes are the column named
// code (SNOMED CT, ICD-10), dmd_id (dm+d) or id; system, when empty, is
// taken from the column and the codes (all valid SNOMED CT ids: snomed;
// all ICD-10 codes: icd10). Duplicate rows (a code listed once for each
// source it came from) count once. Every code must be valid for the
// system: a list that does not parse whole is refused, naming the line.
func ParseOpenCodelistsCSV(r io.Reader, system string) (codes []string, sys string, err error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	header, err := cr.Read()
	if err != nil {
		return nil, "", fmt.Errorf("read the header row: %w", err)
	}
	col := -1
	for _, want := range []string{"code", "dmd_id", "id"} {
		for i, h := range header {
			if strings.EqualFold(strings.TrimSpace(strings.TrimPrefix(h, "\ufeff")), want) && col < 0 {
				col = i
				if want == "dmd_id" && system == "" {
					system = SystemDMD
				}
			}
		}
	}
	if col < 0 {
		return nil, "", errors.New("no code column: OpenCodelists' CSV download has a column named code (or dmd_id for dm+d)")
	}
	seen := map[string]bool{}
	for line := 2; ; line++ {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, "", fmt.Errorf("line %d: %w", line, err)
		}
		if col >= len(rec) {
			return nil, "", fmt.Errorf("line %d: no code", line)
		}
		code := strings.TrimSpace(rec[col])
		if code == "" {
			return nil, "", fmt.Errorf("line %d: an empty code", line)
		}
		if !seen[code] {
			seen[code] = true
			codes = append(codes, code)
		}
		if len(codes) > MaxCodelistCodes {
			return nil, "", fmt.Errorf("more than %d codes", MaxCodelistCodes)
		}
	}
	if len(codes) == 0 {
		return nil, "", errors.New("the list holds no code")
	}
	if system == "" {
		switch {
		case all(codes, ingest.ValidSCTID):
			system = SystemSNOMED
		case all(codes, ingest.ValidICD10):
			system = SystemICD10
		default:
			return nil, "", errors.New("the codes are neither all SNOMED CT nor all ICD-10 (CTV3 and Read codes are not used here); say which with --system")
		}
	}
	valid := map[string]func(string) bool{SystemSNOMED: ingest.ValidSCTID, SystemDMD: ingest.ValidSCTID, SystemICD10: ingest.ValidICD10}[system]
	if valid == nil {
		return nil, "", fmt.Errorf("system %q: snomed, icd10 or dmd", clip(system))
	}
	for i, c := range codes {
		if !valid(c) {
			return nil, "", fmt.Errorf("code %d (%q) is not a valid %s code", i+1, clip(c), system)
		}
	}
	slices.Sort(codes)
	return codes, system, nil
}

func all(xs []string, f func(string) bool) bool {
	for _, x := range xs {
		if !f(x) {
			return false
		}
	}
	return true
}

// codesHash is the SHA-256 of sorted codes, one a line.
func codesHash(codes []string) string {
	h := sha256.Sum256([]byte(strings.Join(codes, "\n") + "\n"))
	return hex.EncodeToString(h[:])
}

// Codelists keeps the hub's code lists in a folder, one JSON file a
// version (NAME/VERSION.json).
type Codelists struct{ dir string }

// OpenCodelists opens (creating) the code list folder.
func OpenCodelists(dir string) (*Codelists, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("code lists: %w", err)
	}
	return &Codelists{dir: dir}, nil
}

// ErrCodelistChanged refuses a second import of a version with other codes.
var ErrCodelistChanged = errors.New("this version of the code list is already stored with other codes; import the new codes as a new version")

func (s *Codelists) path(name, version string) string {
	return filepath.Join(s.dir, filepath.FromSlash(name), version+".json")
}

// Put stores a code list version. Storing the same codes again is a
// no-op; other codes under a stored version are refused.
func (s *Codelists) Put(c *Codelist) error {
	if _, _, err := ParseCodelistRef(c.Ref()); err != nil {
		return err
	}
	c.SHA256 = codesHash(c.Codes)
	if old, err := s.Get(c.Ref()); err == nil {
		if old.SHA256 != c.SHA256 || old.System != c.System {
			return fmt.Errorf("%s: %w", c.Ref(), ErrCodelistChanged)
		}
		*c = *old
		return nil
	} else if !errors.Is(err, ErrNoCodelist) {
		return err
	}
	b, err := json.MarshalIndent(c, "", " ")
	if err != nil {
		return err
	}
	p := s.path(c.Name, c.Version)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// ErrNoCodelist is a reference to a code list the hub does not hold.
var ErrNoCodelist = errors.New("no such code list in this hub (GET /v1/codelists lists them; an admin imports one with hub codelist import)")

// Get returns a stored code list version by name@version.
func (s *Codelists) Get(ref string) (*Codelist, error) {
	name, version, err := ParseCodelistRef(ref)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(s.path(name, version))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", ref, ErrNoCodelist)
	}
	if err != nil {
		return nil, err
	}
	var c Codelist
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("code list %s: %w", ref, err)
	}
	if c.Ref() != ref || codesHash(c.Codes) != c.SHA256 {
		return nil, fmt.Errorf("code list %s: the stored file does not match its name or hash", ref)
	}
	return &c, nil
}

// List returns every stored version, without their codes, by reference.
func (s *Codelists) List() ([]Codelist, error) {
	var out []Codelist
	err := filepath.WalkDir(s.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".json") {
			return err
		}
		rel, _ := filepath.Rel(s.dir, p)
		rel = filepath.ToSlash(strings.TrimSuffix(rel, ".json"))
		i := strings.LastIndexByte(rel, '/')
		c, err := s.Get(rel[:i] + "@" + rel[i+1:])
		if err != nil {
			return err
		}
		n := len(c.Codes)
		c.Codes = nil
		out = append(out, *c)
		out[len(out)-1].Count = n
		return nil
	})
	slices.SortFunc(out, func(a, b Codelist) int { return strings.Compare(a.Ref(), b.Ref()) })
	return out, err
}

// A CodelistUse is a code list a query used, as its answer cites it.
type CodelistUse struct {
	Ref    string `json:"ref"`
	System string `json:"system"`
	Codes  int    `json:"codes"`
	SHA256 string `json:"sha256"`
}

// resolveCodelists looks up every code list the query names, checks that
// its system suits the table it is used on, and attaches it; it returns
// the lists used, by reference. With a nil store it only checks that
// every list was attached before.
func resolveCodelists(q *Query, store *Codelists) ([]CodelistUse, error) {
	used := map[string]CodelistUse{}
	attach := func(c *Codes, table, at string) error {
		if c == nil || c.Codelist == "" {
			return nil
		}
		if l := c.list; l != nil && l.Ref() == c.Codelist { // resolved before
			used[l.Ref()] = CodelistUse{Ref: l.Ref(), System: l.System, Codes: len(l.Codes), SHA256: l.SHA256}
			return nil
		}
		if store == nil {
			return bad("%s.codelist: this hub keeps no code lists", at)
		}
		l, err := store.Get(c.Codelist)
		if errors.Is(err, ErrNoCodelist) {
			return bad("%s.codelist: %v", at, err)
		}
		if err != nil {
			return err
		}
		ok := map[string][]string{"conditions": {SystemSNOMED, SystemICD10}, "medications": {SystemDMD},
			"observations": {SystemSNOMED}, "procedures": {SystemSNOMED}, "immunizations": {SystemSNOMED, SystemDMD}}[table]
		if !slices.Contains(ok, l.System) {
			return bad("%s.codelist: %s is a %s list; %s are coded in %s", at, l.Ref(), l.System, table, strings.Join(ok, " or "))
		}
		c.list = l
		used[l.Ref()] = CodelistUse{Ref: l.Ref(), System: l.System, Codes: len(l.Codes), SHA256: l.SHA256}
		return nil
	}
	var walk func(k *Criterion, at string) error
	walk = func(k *Criterion, at string) error {
		if k == nil {
			return nil
		}
		for i, x := range k.All {
			if err := walk(x, fmt.Sprintf("%s.all[%d]", at, i)); err != nil {
				return err
			}
		}
		for i, x := range k.Any {
			if err := walk(x, fmt.Sprintf("%s.any[%d]", at, i)); err != nil {
				return err
			}
		}
		if err := walk(k.Not, at+".not"); err != nil {
			return err
		}
		for _, e := range []struct {
			ev          *Event
			table, name string
		}{{k.Condition, "conditions", "condition"}, {k.Medication, "medications", "medication"}, {k.Observation, "observations", "observation"},
			{k.Procedure, "procedures", "procedure"}, {k.Immunisation, "immunizations", "immunisation"}} {
			if e.ev != nil {
				if err := attach(e.ev.Codes, e.table, at+"."+e.name+".codes"); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(q.Criteria, "criteria"); err != nil {
		return nil, err
	}
	for i := range q.Cohorts {
		if err := walk(q.Cohorts[i].Criteria, fmt.Sprintf("cohorts[%d].criteria", i)); err != nil {
			return nil, err
		}
	}
	for i := range q.Measures {
		if err := walk(q.Measures[i].Denominator, fmt.Sprintf("measures[%d].denominator", i)); err != nil {
			return nil, err
		}
		if err := walk(q.Measures[i].Numerator, fmt.Sprintf("measures[%d].numerator", i)); err != nil {
			return nil, err
		}
	}
	for i := range q.Measures {
		if x := q.Measures[i].Of; x != nil {
			table := x.Table
			if x.Kind == ValueObservation {
				table = "observations"
			}
			if err := attach(x.Codes, table, fmt.Sprintf("measures[%d].of.codes", i)); err != nil {
				return nil, err
			}
		}
	}
	out := make([]CodelistUse, 0, len(used))
	for _, u := range used {
		out = append(out, u)
	}
	slices.SortFunc(out, func(a, b CodelistUse) int { return strings.Compare(a.Ref, b.Ref) })
	return out, nil
}

// all returns the codes a criterion matches, by system: those it lists
// and those of its code list.
func (c *Codes) all() (snomed, icd10, dmd []string) {
	snomed, icd10, dmd = c.SNOMED, c.ICD10, c.DMD
	if l := c.list; l != nil {
		switch l.System {
		case SystemSNOMED:
			snomed = append(slices.Clip(snomed), l.Codes...)
		case SystemICD10:
			icd10 = append(slices.Clip(icd10), l.Codes...)
		case SystemDMD:
			dmd = append(slices.Clip(dmd), l.Codes...)
		}
	}
	return snomed, icd10, dmd
}
