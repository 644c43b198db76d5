// Package file is the lake on a local folder, the default: objects are
// files, written to a temporary name and renamed into place when whole.
package file

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/nhs-hub/hub/catalog"
)

// Dir is a Store on a local folder.
type Dir struct {
	root string
}

var _ catalog.Store = (*Dir)(nil)

// Open returns the store at root, creating the folder.
func Open(root string) (*Dir, error) {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("open lake: %w", err)
	}
	return &Dir{root: root}, nil
}

func (d *Dir) path(p string) (string, error) {
	if p == "" || strings.Contains(p, "..") || strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("invalid object path")
	}
	return filepath.Join(d.root, filepath.FromSlash(p)), nil
}

const tmpSuffix = ".tmp-"

func tempName(final string) string {
	var b [8]byte
	rand.Read(b[:])
	return final + tmpSuffix + hex.EncodeToString(b[:])
}

type fileWriter struct {
	f      *os.File
	tmp    string
	final  string
	closed bool
	err    error
}

func (w *fileWriter) Write(p []byte) (int, error) { return w.f.Write(p) }

// Close syncs the file and renames it into place.
func (w *fileWriter) Close() error {
	if w.closed {
		return w.err
	}
	w.closed = true
	err := w.f.Sync()
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(w.tmp, w.final)
	}
	if err != nil {
		os.Remove(w.tmp)
		w.err = fmt.Errorf("write object: %w", err)
	}
	return w.err
}

// Abort drops the unfinished object: the temporary file is removed.
func (w *fileWriter) Abort() {
	if w.closed {
		return
	}
	w.closed, w.err = true, errors.New("write aborted")
	w.f.Close()
	os.Remove(w.tmp)
}

// Create implements catalog.Store.
func (d *Dir) Create(_ context.Context, p string) (io.WriteCloser, error) {
	final, err := d.path(p)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return nil, fmt.Errorf("create object: %w", err)
	}
	tmp := tempName(final)
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create object: %w", err)
	}
	return &fileWriter{f: f, tmp: tmp, final: final}, nil
}

// PutIfAbsent implements catalog.Store with a hard link, which fails if
// the name exists: the object appears whole or not at all.
func (d *Dir) PutIfAbsent(_ context.Context, p string, data []byte) error {
	final, err := d.path(p)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return fmt.Errorf("put object: %w", err)
	}
	tmp := tempName(final)
	defer os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("put object: %w", err)
	}
	_, err = f.Write(data)
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("put object: %w", err)
	}
	if err := os.Link(tmp, final); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return catalog.ErrExists
		}
		return fmt.Errorf("put object: %w", err)
	}
	if dir, err := os.Open(filepath.Dir(final)); err == nil {
		dir.Sync()
		dir.Close()
	}
	return nil
}

// Open implements catalog.Store.
func (d *Dir) Open(_ context.Context, p string) (io.ReadCloser, error) {
	full, err := d.path(p)
	if err != nil {
		return nil, err
	}
	return os.Open(full)
}

// List implements catalog.Store; temporary files of unfinished writes are
// listed too, so that gc can remove them.
func (d *Dir) List(_ context.Context, prefix string) ([]string, error) {
	var out []string
	start := filepath.Join(d.root, filepath.FromSlash(prefix))
	err := filepath.WalkDir(start, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !e.IsDir() {
			rel, _ := filepath.Rel(d.root, p)
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list objects: %w", err)
	}
	sort.Strings(out)
	return out, nil
}

// Delete implements catalog.Store.
func (d *Dir) Delete(_ context.Context, p string) error {
	full, err := d.path(p)
	if err != nil {
		return err
	}
	if err := os.Remove(full); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete object: %w", err)
	}
	return nil
}

// LocalPath is the file that holds object p, for readers such as DuckDB
// that read files themselves.
func (d *Dir) LocalPath(p string) (string, error) { return d.path(p) }
