// Package catalog owns the lake: immutable Parquet parts of dataset
// versions, each committed by a manifest written last, on a local folder
// or S3-compatible storage. Readers see only versions whose manifest
// exists, so a crashed publish leaves nothing visible.
//
//	datasets/<name>/versions/<n>/<table>/part-<k>.parquet   immutable parts
//	datasets/<name>/versions/<n>/manifest.json               the commit
//	datasets/<name>/versions/<n>/_claim                      which run owns n
package catalog

import (
	"context"
	"errors"
	"io"
)

// ErrExists is returned by PutIfAbsent when the object already exists.
var ErrExists = errors.New("object already exists")

// A Store holds the lake's objects under slash-separated paths.
// Implementations must be safe for concurrent use.
type Store interface {
	// Create streams a new object; it becomes visible at path, whole, only
	// when Close returns nil. Close may be called more than once. The
	// lake's stores' writers also have an Abort method that drops the
	// object, leaving nothing behind.
	Create(ctx context.Context, path string) (io.WriteCloser, error)
	// PutIfAbsent writes a small object only if none exists at path,
	// atomically; otherwise it returns ErrExists.
	PutIfAbsent(ctx context.Context, path string, data []byte) error
	// Open reads an object; a missing one gives an error wrapping
	// fs.ErrNotExist.
	Open(ctx context.Context, path string) (io.ReadCloser, error)
	// List returns the paths of all objects under prefix, sorted.
	List(ctx context.Context, prefix string) ([]string, error)
	// Delete removes an object; a missing one is not an error.
	Delete(ctx context.Context, path string) error
}
