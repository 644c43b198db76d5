// Package s3 is the lake on S3-compatible object storage (MinIO, AWS S3)
// through minio-go. Objects stream up by multipart upload and appear
// whole when the upload completes; conditional puts use If-None-Match.
package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"sort"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/nhs-hub/hub/catalog"
)

// DefaultPartSize is the multipart upload part size: large enough for few
// requests, small enough to hold two in memory.
const DefaultPartSize = 32 << 20

// Config says how to reach a bucket. Credentials come from the caller
// (flags or the usual environment, read in cmd/hub), never from here.
type Config struct {
	Endpoint  string // host:port
	AccessKey string
	SecretKey string
	Region    string
	TLS       bool
	Bucket    string
	Prefix    string // a folder inside the bucket, may be empty
	PartSize  uint64
}

// Store is a catalog.Store on one bucket and prefix.
type Store struct {
	c      *minio.Client
	bucket string
	prefix string
	part   uint64
}

var _ catalog.Store = (*Store)(nil)

// Open connects and checks that the bucket exists, so a wrong endpoint,
// wrong credentials or a missing bucket fail here with a clear error.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	c, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds: credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""), Secure: cfg.TLS, Region: cfg.Region,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 client: %w", err)
	}
	ok, err := c.BucketExists(ctx, cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("reach bucket %s at %s: %w", cfg.Bucket, cfg.Endpoint, describe(err))
	}
	if !ok {
		return nil, fmt.Errorf("bucket %s does not exist at %s: create it first", cfg.Bucket, cfg.Endpoint)
	}
	part := cfg.PartSize
	if part == 0 {
		part = DefaultPartSize
	}
	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix != "" {
		prefix += "/"
	}
	return &Store{c: c, bucket: cfg.Bucket, prefix: prefix, part: part}, nil
}

// ParseURL splits s3://bucket/prefix.
func ParseURL(u string) (bucket, prefix string, err error) {
	rest, ok := strings.CutPrefix(u, "s3://")
	if !ok || rest == "" {
		return "", "", fmt.Errorf("not an s3:// URL")
	}
	bucket, prefix, _ = strings.Cut(rest, "/")
	return bucket, strings.Trim(prefix, "/"), nil
}

func describe(err error) error {
	switch minio.ToErrorResponse(err).Code {
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch":
		return fmt.Errorf("%w (check the access key and secret)", err)
	case "XMinioStorageFull":
		return fmt.Errorf("%w (the S3 server's disk is full: free space there, then run again)", err)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		// minio-go has already retried. Its message holds the request's
		// URL twice, with the upload id; once, without the query, is enough.
		where := ue.URL
		if u, perr := url.Parse(ue.URL); perr == nil {
			u.RawQuery = ""
			where = u.String()
		}
		cause := strings.Join(strings.Fields(strings.ReplaceAll(ue.Err.Error(), ue.URL, "")), " ")
		return &netError{fmt.Sprintf("network error: %s %s: %s (check the endpoint and the network, then run again)", ue.Op, where, cause), err}
	}
	return err
}

// A netError is a shorter message for a network failure that still
// unwraps to it (a cancelled context stays errors.Is context.Canceled).
type netError struct {
	msg string
	err error
}

func (e *netError) Error() string { return e.msg }
func (e *netError) Unwrap() error { return e.err }

type upload struct {
	pw     *io.PipeWriter
	done   chan error
	closed bool
	err    error
}

func (u *upload) Write(p []byte) (int, error) { return u.pw.Write(p) }

// Close ends the stream and waits for the upload; the object exists only
// if it returns nil.
func (u *upload) Close() error {
	if u.closed {
		return u.err
	}
	u.closed = true
	u.pw.Close()
	u.err = <-u.done
	return u.err
}

// Abort drops the upload: minio-go aborts the multipart upload when its
// stream fails, and no object appears.
func (u *upload) Abort() {
	if u.closed {
		return
	}
	u.closed = true
	u.pw.CloseWithError(errors.New("upload aborted"))
	u.err = <-u.done
}

// Create implements catalog.Store: the bytes stream through a pipe into a
// multipart upload, so nothing is buffered whole. If ctx is cancelled
// first, the upload is aborted and no object appears.
func (s *Store) Create(ctx context.Context, path string) (io.WriteCloser, error) {
	pr, pw := io.Pipe()
	u := &upload{pw: pw, done: make(chan error, 1)}
	go func() {
		_, err := s.c.PutObject(ctx, s.bucket, s.prefix+path, pr, -1, minio.PutObjectOptions{
			PartSize: s.part, ContentType: "application/octet-stream",
		})
		if err != nil {
			err = fmt.Errorf("upload %s: %w", path, describe(err))
		}
		pr.CloseWithError(err) // unblock a writer if the upload failed
		u.done <- err
	}()
	return u, nil
}

// PutIfAbsent implements catalog.Store with If-None-Match: *.
func (s *Store) PutIfAbsent(ctx context.Context, path string, data []byte) error {
	opts := minio.PutObjectOptions{ContentType: "application/json"}
	opts.SetMatchETagExcept("*")
	_, err := s.c.PutObject(ctx, s.bucket, s.prefix+path, strings.NewReader(string(data)), int64(len(data)), opts)
	if err != nil {
		if r := minio.ToErrorResponse(err); r.StatusCode == http.StatusPreconditionFailed || r.Code == "PreconditionFailed" {
			return catalog.ErrExists
		}
		return fmt.Errorf("put %s: %w", path, describe(err))
	}
	return nil
}

// Open implements catalog.Store.
func (s *Store) Open(ctx context.Context, path string) (io.ReadCloser, error) {
	if _, err := s.c.StatObject(ctx, s.bucket, s.prefix+path, minio.StatObjectOptions{}); err != nil {
		if minio.ToErrorResponse(err).Code == "NoSuchKey" {
			return nil, fmt.Errorf("%s: %w", path, fs.ErrNotExist)
		}
		return nil, fmt.Errorf("open %s: %w", path, describe(err))
	}
	obj, err := s.c.GetObject(ctx, s.bucket, s.prefix+path, minio.GetObjectOptions{})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, describe(err))
	}
	return obj, nil
}

// List implements catalog.Store. Unfinished multipart uploads (a publish
// that lost its network or was killed) are listed too, like the local
// lake's temporary files, so that gc can remove them: they hold storage
// until aborted.
func (s *Store) List(ctx context.Context, prefix string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	add := func(key string) {
		if k := strings.TrimPrefix(key, s.prefix); !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	for o := range s.c.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix + prefix, Recursive: true}) {
		if o.Err != nil {
			return nil, fmt.Errorf("list %s: %w", prefix, describe(o.Err))
		}
		add(o.Key)
	}
	// MinIO lists unfinished uploads by exact object name or for the whole
	// bucket, not by folder, so the bucket's list is filtered here.
	for u := range s.c.ListIncompleteUploads(ctx, s.bucket, "", true) {
		if u.Err != nil {
			return nil, fmt.Errorf("list unfinished uploads %s: %w", prefix, describe(u.Err))
		}
		if strings.HasPrefix(u.Key, s.prefix+prefix) {
			add(u.Key)
		}
	}
	sort.Strings(out)
	return out, nil
}

// Delete implements catalog.Store: it removes the object and aborts any
// unfinished upload of it.
func (s *Store) Delete(ctx context.Context, path string) error {
	if err := s.c.RemoveObject(ctx, s.bucket, s.prefix+path, minio.RemoveObjectOptions{}); err != nil {
		if minio.ToErrorResponse(err).Code != "NoSuchKey" {
			return fmt.Errorf("delete %s: %w", path, describe(err))
		}
	}
	if err := s.c.RemoveIncompleteUpload(ctx, s.bucket, s.prefix+path); err != nil {
		return fmt.Errorf("abort the unfinished upload of %s: %w", path, describe(err))
	}
	return nil
}
