package governance

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path"
)

// CheckpointPrefix is where the server writes the audit log's head in the
// lake. Each checkpoint is written once and never replaced (on S3 with
// object lock it cannot be), so cutting entries off the end of the log and
// rewriting audit.head, or swapping in a new log, no longer verifies
// against the lake: the log must still contain every checkpoint.
const CheckpointPrefix = "audit-checkpoints/"

// A CheckpointStore is the part of a lake store checkpoints need.
type CheckpointStore interface {
	PutIfAbsent(ctx context.Context, path string, data []byte) error
	Open(ctx context.Context, path string) (io.ReadCloser, error)
	List(ctx context.Context, prefix string) ([]string, error)
}

// WriteCheckpoint writes h to the store, once. A checkpoint already there
// for the same entry must name the same hash: a different one means the
// log was rewritten since it was written.
func WriteCheckpoint(ctx context.Context, st CheckpointStore, h Head) error {
	if h.Seq == 0 {
		return nil
	}
	data, _ := json.Marshal(h)
	p := path.Join(CheckpointPrefix, fmt.Sprintf("%012d.json", h.Seq))
	err := st.PutIfAbsent(ctx, p, append(data, '\n'))
	if err == nil {
		return nil
	}
	old, rerr := readCheckpoint(ctx, st, p)
	if rerr != nil {
		return fmt.Errorf("write audit checkpoint: %w", err)
	}
	if old.Hash != h.Hash {
		return &ChainError{Reason: fmt.Sprintf("the lake's checkpoint of entry %d names another hash than the log's (the log was rewritten)", h.Seq)}
	}
	return nil
}

// Checkpoints reads every checkpoint in the store, oldest first.
func Checkpoints(ctx context.Context, st CheckpointStore) ([]Head, error) {
	paths, err := st.List(ctx, CheckpointPrefix)
	if err != nil {
		return nil, fmt.Errorf("list audit checkpoints: %w", err)
	}
	out := make([]Head, 0, len(paths))
	for _, p := range paths {
		h, err := readCheckpoint(ctx, st, p)
		if err != nil {
			return nil, err
		}
		out = append(out, h)
	}
	return out, nil
}

func readCheckpoint(ctx context.Context, st CheckpointStore, p string) (Head, error) {
	r, err := st.Open(ctx, p)
	if err != nil {
		return Head{}, fmt.Errorf("read audit checkpoint %s: %w", p, err)
	}
	defer r.Close()
	data, err := io.ReadAll(io.LimitReader(r, 1<<10))
	if err != nil {
		return Head{}, fmt.Errorf("read audit checkpoint %s: %w", p, err)
	}
	var h Head
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil || h.Seq <= 0 || len(h.Hash) != 64 {
		return Head{}, &ChainError{Reason: fmt.Sprintf("the audit checkpoint %s is not valid", p)}
	}
	return h, nil
}
