package ingest

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
)

// SNOMED CT codes for type 1 dissent (objection to secondary use of GP
// patient identifiable data) and its withdrawal.
const (
	CodeType1Dissent   = "827241000000103"
	CodeType1Withdrawn = "827261000000102"
)

// OptOuts is the National Data Opt-out (NDOP) list: the NHS numbers of
// patients who have opted out. It is safe for concurrent reads.
type OptOuts struct {
	set *idSet
	// Summary of the loaded file; no value of it is identifiable.
	Stats OptOutStats
}

// OptOutStats describes a loaded opt-out list without naming anyone.
type OptOutStats struct {
	Lines    int    `json:"lines"`
	Numbers  int    `json:"numbers"`
	Invalid  int    `json:"invalid_lines"`
	Blank    int    `json:"blank_lines"`
	Repeated int    `json:"repeated"`
	SHA256   string `json:"sha256"`
	// InvalidLines holds the line numbers of the first invalid lines.
	InvalidLines []int `json:"invalid_line_numbers,omitempty"`
}

// maxOptOutLine bounds a line of the opt-out list; longer lines are junk.
const maxOptOutLine = 256

// LoadOptOuts reads an NDOP list, one NHS number a line (either grouping
// that [ParseNHSNumber] accepts, CRLF or LF, a UTF-8 BOM and a trailing
// comment after '#' allowed). Junk lines are counted and their line numbers
// kept, never their contents. An empty reader gives an empty list.
func LoadOptOuts(ctx context.Context, r io.Reader) (*OptOuts, error) {
	h := sha256.New()
	br := bufio.NewReaderSize(io.TeeReader(r, h), 1<<20)
	o := &OptOuts{set: newIDSet(1 << 16)}
	st := &o.Stats
	for {
		line, err := readLine(br, maxOptOutLine)
		if err == io.EOF {
			break
		}
		st.Lines++
		if err == errLineTooLong {
			st.invalid(st.Lines)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read opt-out list: %w", err)
		}
		if st.Lines == 1 && len(line) >= 3 && line[0] == 0xEF && line[1] == 0xBB && line[2] == 0xBF {
			line = line[3:]
		}
		if st.Lines%(1<<20) == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		for i, c := range line {
			if c == '#' {
				line = line[:i]
				break
			}
		}
		if len(trimSpace(line)) == 0 {
			st.Blank++
			continue
		}
		n, err := ParseNHSNumber(line)
		if err != nil {
			st.invalid(st.Lines)
			continue
		}
		st.Numbers++
		if !o.set.Add(n) {
			st.Repeated++
		}
	}
	st.SHA256 = hex.EncodeToString(h.Sum(nil))
	return o, nil
}

func (st *OptOutStats) invalid(line int) {
	st.Invalid++
	if len(st.InvalidLines) < 20 {
		st.InvalidLines = append(st.InvalidLines, line)
	}
}

// Has reports whether the patient with NHS number n has opted out.
func (o *OptOuts) Has(n uint64) bool { return o != nil && o.set.Has(n) }

// Len returns the number of distinct NHS numbers in the list.
func (o *OptOuts) Len() int {
	if o == nil {
		return 0
	}
	return o.set.Len()
}

// readLine returns the next line without its LF or CRLF ending. The slice
// is valid until the next call. A line longer than max is consumed whole
// and reported as errLineTooLong, using bounded memory.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err == bufio.ErrBufferFull || (err == nil && len(line) > max+2) {
		for err == bufio.ErrBufferFull {
			_, err = br.ReadSlice('\n')
		}
		if err != nil && err != io.EOF {
			return nil, err
		}
		return nil, errLineTooLong
	}
	if err == io.EOF {
		if len(line) == 0 {
			return nil, io.EOF
		}
		err = nil
	}
	if err != nil {
		return nil, err
	}
	if n := len(line); n > 0 && line[n-1] == '\n' {
		line = line[:n-1]
	}
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if len(line) > max {
		return nil, errLineTooLong
	}
	return line, nil
}
