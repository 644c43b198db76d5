package catalog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
)

// A LocalPather is a Store whose objects are local files.
type LocalPather interface {
	LocalPath(p string) (string, error)
}

// Local returns local files holding every part of a version, by table,
// each checked against the manifest's size and SHA-256. Parts of a local
// lake are checked where they lie; parts of any other store are
// downloaded into cacheDir (kept between calls, and checked again on
// every call, so that a corrupted cache is refetched, not trusted).
func (l *Lake) Local(ctx context.Context, m *Manifest, cacheDir string) (map[string][]string, error) {
	return l.LocalTables(ctx, m.Tables, cacheDir)
}

// LocalEngine is Local for a version's engine tables (Manifest.EngineTables).
func (l *Lake) LocalEngine(ctx context.Context, m *Manifest, cacheDir string) (map[string][]string, error) {
	return l.LocalTables(ctx, m.EngineTables, cacheDir)
}

// LocalTables is Local for some of a version's tables (its tables or its
// engine tables).
func (l *Lake) LocalTables(ctx context.Context, byName map[string]*TableManifest, cacheDir string) (map[string][]string, error) {
	out := map[string][]string{}
	tables := make([]string, 0, len(byName))
	for t := range byName {
		tables = append(tables, t)
	}
	sort.Strings(tables)
	lp, local := l.store.(LocalPather)
	for _, table := range tables {
		for _, part := range byName[table].Parts {
			var path string
			var err error
			if local {
				if path, err = lp.LocalPath(part.Path); err != nil {
					return nil, err
				}
				if err := checkFile(path, part); err != nil {
					return nil, fmt.Errorf("%s: %w", part.Path, err)
				}
			} else if path, err = l.fetch(ctx, part, cacheDir); err != nil {
				return nil, err
			}
			out[table] = append(out[table], path)
		}
	}
	return out, nil
}

// checkFile compares a file with its manifest entry.
func checkFile(path string, part Part) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return matches(f, part)
}

// fetch returns the cached copy of a part, downloading it (to a temporary
// name, renamed once its checksum matches) when missing or corrupt.
func (l *Lake) fetch(ctx context.Context, part Part, cacheDir string) (string, error) {
	if cacheDir == "" {
		return "", errors.New("reading a remote lake needs a cache folder")
	}
	path := filepath.Join(cacheDir, filepath.FromSlash(part.Path))
	if checkFile(path, part) == nil {
		return path, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", fmt.Errorf("cache %s: %w", part.Path, err)
	}
	r, err := l.store.Open(ctx, part.Path)
	if err != nil {
		return "", fmt.Errorf("fetch %s: %w", part.Path, err)
	}
	defer r.Close()
	tmp, err := os.CreateTemp(filepath.Dir(path), ".fetch-*")
	if err != nil {
		return "", fmt.Errorf("cache %s: %w", part.Path, err)
	}
	defer os.Remove(tmp.Name())
	err = matches(io.TeeReader(r, tmp), part)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("fetch %s: %w", part.Path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("cache %s: %w", part.Path, err)
	}
	return path, nil
}
