package governance

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/nhs-hub/hub/internal/secretfile"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// The audit key turns the chain's plain SHA-256 into HMAC-SHA256. Kept
// outside the state folder (another mount, a secret store, a file only
// the service account reads), it means that whoever can write the state
// folder but not read the key cannot relink the chain: dropping, editing
// or reordering an entry and rehashing everything after it no longer
// verifies. A keyed log is keyed from its first entry; a log started
// without a key stays unkeyed, since a key that could be switched on
// midway could as well be switched off by rewriting the log.
const auditKeyBytes = 32

// NewAuditKey writes a new random audit key to path (hex, mode 0600). It
// refuses to overwrite a key: the log it keys would no longer verify.
func NewAuditKey(path string) error {
	key := make([]byte, auditKeyBytes)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	err := secretfile.Create(path, []byte(hex.EncodeToString(key)+"\n"))
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s already exists: a new key would not verify the log the old one keyed", path)
	}
	return err
}

// LoadAuditKey reads the audit key at path for the state folder dir. The
// key must not be inside the state folder (whoever writes the folder
// would have it), nor readable by group or others.
func LoadAuditKey(path, dir string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("audit key: %w (make one with `hub audit keygen --out PATH`)", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("audit key %s is readable by others (mode %v): chmod 600 it", path, st.Mode().Perm())
	}
	if inside(path, dir) {
		return nil, fmt.Errorf("audit key %s is inside the state folder %s: keep it where the state's writer cannot read it", path, dir)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(data)))
	if err != nil || len(key) < auditKeyBytes {
		return nil, fmt.Errorf("audit key %s is not %d or more hex-encoded bytes (make one with `hub audit keygen --out PATH`)", path, auditKeyBytes)
	}
	return key, nil
}

// inside reports whether path is within dir, after resolving links.
func inside(path, dir string) bool {
	abs := func(p string) string {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			p = r
		}
		a, err := filepath.Abs(p)
		if err != nil {
			return p
		}
		return a
	}
	rel, err := filepath.Rel(abs(dir), abs(path))
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}
