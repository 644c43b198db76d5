package cohorts

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/nhs-hub/hub/catalog"
)

// Sentinel errors of projects and tokens.
var (
	ErrUnauthorized      = errors.New("missing or unknown bearer token")
	ErrForbidden         = errors.New("the token does not belong to this project")
	ErrNoProject         = errors.New("no such project")
	ErrProjectExists     = errors.New("project already exists")
	ErrDatasetNotAllowed = errors.New("the project is not approved for this dataset")
	ErrExpired           = errors.New("the project has expired")
)

// A Project is an approved use of datasets with a privacy budget. Its
// token is stored only as a SHA-256.
type Project struct {
	Name        string     `json:"name"`
	TokenSHA256 string     `json:"token_sha256"`
	EpsilonU    int64      `json:"epsilon_total_units"`
	DeltaU      int64      `json:"delta_total_units"`
	MaxQueryU   int64      `json:"max_query_epsilon_units"`
	Datasets    []string   `json:"datasets"`
	Created     time.Time  `json:"created"`
	Expires     *time.Time `json:"expires,omitempty"`
}

// A ProjectSpec is what an admin asks for when creating a project.
type ProjectSpec struct {
	Name            string
	Epsilon, Delta  float64
	MaxQueryEpsilon float64 // 0: the whole budget
	Datasets        []string
	Expires         *time.Time
}

// ProjectPath is where a project is stored under a state folder.
func ProjectPath(state, name string) string {
	return filepath.Join(state, "projects", name+".json")
}

func ledgerPath(state, name string) string {
	return filepath.Join(state, "ledger", name+".jsonl")
}

// CreateProject writes a new project under state and returns its bearer
// token, which is shown once and stored only as a hash.
func CreateProject(state string, s ProjectSpec) (token string, err error) {
	if !catalog.ValidName(s.Name) {
		return "", fmt.Errorf("project name %q: use lower-case letters, digits, '-' and '_'", s.Name)
	}
	if math.IsNaN(s.Epsilon) || s.Epsilon <= 0 || s.Epsilon > 1000 {
		return "", errors.New("epsilon must be above 0 and at most 1000")
	}
	if math.IsNaN(s.Delta) || s.Delta < 0 || s.Delta > MaxDelta {
		return "", fmt.Errorf("delta must be between 0 and %g", MaxDelta)
	}
	if s.MaxQueryEpsilon < 0 || s.MaxQueryEpsilon > s.Epsilon {
		return "", errors.New("the per-query cap must lie between 0 and the total epsilon")
	}
	if len(s.Datasets) == 0 {
		return "", errors.New("name at least one dataset the project may query")
	}
	for _, d := range s.Datasets {
		if !catalog.ValidName(d) {
			return "", fmt.Errorf("dataset name %q is not valid", d)
		}
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	token = "hub_" + hex.EncodeToString(b)
	capE := s.MaxQueryEpsilon
	if capE == 0 {
		capE = s.Epsilon
	}
	p := Project{Name: s.Name, TokenSHA256: tokenHash(token), EpsilonU: units(s.Epsilon, EpsilonUnit),
		DeltaU: units(s.Delta, DeltaUnit), MaxQueryU: units(capE, EpsilonUnit), Datasets: s.Datasets,
		Created: time.Now().UTC().Truncate(time.Second), Expires: s.Expires}
	data, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return "", err
	}
	path := ProjectPath(state, s.Name)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("create project: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("%s: %w", s.Name, ErrProjectExists)
	}
	if err != nil {
		return "", fmt.Errorf("create project: %w", err)
	}
	if _, err = f.Write(append(data, '\n')); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return "", fmt.Errorf("create project: %w", err)
	}
	return token, nil
}

func tokenHash(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// loadProject reads a project from state.
func loadProject(state, name string) (*Project, error) {
	if !catalog.ValidName(name) {
		return nil, fmt.Errorf("%q: %w", clip(name), ErrNoProject)
	}
	data, err := os.ReadFile(ProjectPath(state, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", name, ErrNoProject)
	}
	if err != nil {
		return nil, err
	}
	var p Project
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("read project %s: %w", name, err)
	}
	return &p, nil
}

// tokenOK compares a token with the project's hash in constant time.
func (p *Project) tokenOK(token string) bool {
	return subtle.ConstantTimeCompare([]byte(tokenHash(token)), []byte(p.TokenSHA256)) == 1
}

// allows reports whether the project may query a dataset at time now.
func (p *Project) allows(dataset string, now time.Time) error {
	if p.Expires != nil && now.After(*p.Expires) {
		return ErrExpired
	}
	if !slices.Contains(p.Datasets, dataset) {
		return fmt.Errorf("%s: %w", dataset, ErrDatasetNotAllowed)
	}
	return nil
}
