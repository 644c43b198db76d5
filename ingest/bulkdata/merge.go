package bulkdata

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/nhs-hub/hub/ingest"
	"github.com/zeebo/xxh3"
)

// Merge writes into out the export that an incremental pull (a _since
// pull in delta) makes of the export before it (in prev): every resource
// of prev but those delta changes (by type and id) or deletes, then every
// resource of delta. Each type's parts are numbered afresh. It holds
// 16 bytes for each resource that delta changes or deletes, never a
// resource; it returns the resources it dropped from prev.
func Merge(ctx context.Context, prev, delta, out string) (dropped int64, err error) {
	gone := map[[16]byte]bool{}
	key := func(typ, id []byte) [16]byte {
		return xxh3.Hash128(append(append(append([]byte(nil), typ...), '/'), id...)).Bytes()
	}
	deltaFiles, err := parts(delta)
	if err != nil {
		return 0, err
	}
	for _, f := range deltaFiles {
		if err := eachLine(filepath.Join(delta, f.name), func(line []byte) error {
			if typ, id, ok := ingest.ResourceKey(line); ok {
				gone[key(typ, id)] = true
			}
			return nil
		}); err != nil {
			return 0, err
		}
	}
	deletes, _ := filepath.Glob(filepath.Join(delta, "deleted.*.ndjson"))
	for _, name := range deletes {
		if err := eachLine(name, func(line []byte) error {
			var b struct {
				Entry []struct {
					Request struct {
						Method string `json:"method"`
						URL    string `json:"url"`
					} `json:"request"`
				} `json:"entry"`
			}
			if json.Unmarshal(line, &b) != nil {
				return fmt.Errorf("%s: a line is not a Bundle", filepath.Base(name))
			}
			for _, e := range b.Entry {
				typ, id, ok := strings.Cut(strings.TrimPrefix(e.Request.URL, "/"), "/")
				if strings.EqualFold(e.Request.Method, "DELETE") && ok {
					gone[key([]byte(typ), []byte(id))] = true
				}
			}
			return nil
		}); err != nil {
			return 0, err
		}
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return 0, err
	}
	prevFiles, err := parts(prev)
	if err != nil {
		return 0, err
	}
	next := map[string]int{} // type → the next part's number
	name := func(typ string) string {
		n := next[typ]
		next[typ] = n + 1
		return fmt.Sprintf("%s.%03d.ndjson", typ, n)
	}
	for _, f := range prevFiles {
		if err := ctx.Err(); err != nil {
			return dropped, err
		}
		n, err := copyPart(filepath.Join(prev, f.name), filepath.Join(out, name(f.typ)), func(line []byte) bool {
			typ, id, ok := ingest.ResourceKey(line)
			return ok && gone[key(typ, id)]
		})
		dropped += n
		if err != nil {
			return dropped, err
		}
	}
	for _, f := range deltaFiles {
		if err := ctx.Err(); err != nil {
			return dropped, err
		}
		if _, err := copyPart(filepath.Join(delta, f.name), filepath.Join(out, name(f.typ)), nil); err != nil {
			return dropped, err
		}
	}
	return dropped, nil
}

// copyPart writes the lines of src to a new file dst, leaving out those
// drop (if not nil) says to; it returns how many it left out.
func copyPart(src, dst string, drop func(line []byte) bool) (dropped int64, err error) {
	w, err := create(dst)
	if err != nil {
		return 0, err
	}
	err = eachLine(src, func(line []byte) error {
		if drop != nil && drop(line) {
			dropped++
			return nil
		}
		_, err := w.Write(append(line, '\n'))
		return err
	})
	if cerr := w.close(); err == nil {
		err = cerr
	}
	return dropped, err
}

type part struct {
	name, typ   string
	lead, trail int
}

// parts lists the NDJSON parts of a folder, as ingest names them, by type
// and place.
func parts(dir string) ([]part, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []part
	for _, e := range entries {
		if typ, lead, trail, ok := ingest.PartOf(e.Name()); ok && typ != "OperationOutcome" {
			out = append(out, part{e.Name(), typ, lead, trail})
		}
	}
	slices.SortFunc(out, func(a, b part) int {
		return cmp.Or(cmp.Compare(a.typ, b.typ), cmp.Compare(a.lead, b.lead), cmp.Compare(a.trail, b.trail), cmp.Compare(a.name, b.name))
	})
	return out, nil
}

func eachLine(path string, fn func([]byte) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r, err := ingest.Decompress(f, strings.HasSuffix(path, ".gz"))
	if err != nil {
		return fmt.Errorf("read %s: %w", filepath.Base(path), err)
	}
	br := bufio.NewReaderSize(r, 1<<20)
	for {
		line, err := br.ReadBytes('\n')
		if l := bytes.TrimSpace(line); len(l) > 0 {
			if ferr := fn(l); ferr != nil {
				return ferr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", filepath.Base(path), err)
		}
	}
}

type fileWriter struct {
	*bufio.Writer
	f *os.File
}

func create(path string) (*fileWriter, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	return &fileWriter{bufio.NewWriterSize(f, 1<<20), f}, nil
}

func (w *fileWriter) close() error {
	err := w.Flush()
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	return err
}
