// Package deid de-identifies ingest's Arrow batches: NHS numbers become
// keyed pseudonyms (HMAC-SHA256 under a secret key of a named
// pseudonymisation domain), direct identifiers are dropped,
// quasi-identifiers are generalised, and a k-anonymity check generalises
// further or suppresses what would single anyone out. It writes the result
// as Parquet.
package deid

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"time"
)

// EventDates says what happens to event dates.
type EventDates string

const (
	DatesKeep  EventDates = "keep"  // exact dates
	DatesMonth EventDates = "month" // the first of the month
	DatesShift EventDates = "shift" // shifted by a per-patient offset
)

// Policy is the de-identification policy. Its hash is recorded in every
// manifest, so a dataset says exactly how it was made.
type Policy struct {
	// Domain names the pseudonymisation domain: the same key gives
	// different pseudonyms in different domains.
	Domain string `json:"domain"`
	// PseudonymBytes is the pseudonym length: 16 (128 bits) to 32.
	PseudonymBytes int `json:"pseudonym_bytes"`
	// EventDates is keep, month or shift.
	EventDates EventDates `json:"event_dates"`
	// ShiftDays bounds the per-patient shift (±) when EventDates is shift.
	ShiftDays int `json:"shift_days,omitempty"`
	// K is the smallest equivalence class released over the
	// quasi-identifiers: every patient attribute released.
	K int `json:"k"`
	// QuasiIdentifiers are the patient attributes the classes are over:
	// birth, sex, place, ethnicity, practice, death (the default: every
	// one released).
	QuasiIdentifiers []string `json:"quasi_identifiers"`
	// Generalisation is the path a patient in a class smaller than K
	// takes, one "attribute:level" step at a time (see
	// DefaultGeneralisation); past its end, the patient is suppressed.
	Generalisation []string `json:"generalisation"`
	// RareCodes is "generalise" (codes fewer than K patients have are
	// published as their ICD-10 category or "other") or "keep".
	RareCodes RareCodes `json:"rare_codes"`
	// ReferenceDate fixes the date ages are computed at (YYYY-MM-DD);
	// empty means the day of the run.
	ReferenceDate string `json:"reference_date,omitempty"`
	// KeepGPPractice keeps the registered practice's ODS code.
	KeepGPPractice bool `json:"keep_gp_practice"`
	// KeepOrganisation keeps encounters' organisation names (free text).
	KeepOrganisation bool `json:"keep_organisation"`
}

// DefaultPolicy returns the safe defaults.
func DefaultPolicy() Policy {
	return Policy{Domain: "hub-research", PseudonymBytes: 16, EventDates: DatesKeep, K: 5,
		QuasiIdentifiers: slices.Clone(qiNames[:]), Generalisation: slices.Clone(DefaultGeneralisation), RareCodes: RareGeneralise}
}

// LoadPolicy reads a JSON policy; fields left out keep their defaults and
// unknown fields are an error.
func LoadPolicy(r io.Reader) (Policy, error) {
	p := DefaultPolicy()
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return p, fmt.Errorf("read policy: %w", err)
	}
	return p, p.Validate()
}

// Validate checks the policy.
func (p Policy) Validate() error {
	switch {
	case p.Domain == "":
		return fmt.Errorf("policy: domain must be named")
	case p.PseudonymBytes < 16 || p.PseudonymBytes > 32:
		return fmt.Errorf("policy: pseudonym_bytes must be 16 to 32 (at least 128 bits)")
	case p.EventDates != DatesKeep && p.EventDates != DatesMonth && p.EventDates != DatesShift:
		return fmt.Errorf("policy: event_dates must be keep, month or shift")
	case p.EventDates == DatesShift && (p.ShiftDays < 1 || p.ShiftDays > 365):
		return fmt.Errorf("policy: shift_days must be 1 to 365")
	case p.K < 2:
		return fmt.Errorf("policy: k must be at least 2")
	case p.RareCodes != RareGeneralise && p.RareCodes != RareKeep:
		return fmt.Errorf("policy: rare_codes must be generalise or keep")
	}
	if err := validSteps(p.QuasiIdentifiers, p.Generalisation); err != nil {
		return err
	}
	if p.ReferenceDate != "" {
		if _, err := time.Parse(time.DateOnly, p.ReferenceDate); err != nil {
			return fmt.Errorf("policy: reference_date must be YYYY-MM-DD")
		}
	}
	return nil
}

// Hash returns the SHA-256 of the policy's canonical JSON.
func (p Policy) Hash() string {
	var b bytes.Buffer
	json.NewEncoder(&b).Encode(p)
	h := sha256.Sum256(b.Bytes())
	return hex.EncodeToString(h[:])
}

func (p Policy) referenceDate() time.Time {
	if t, err := time.Parse(time.DateOnly, p.ReferenceDate); err == nil {
		return t
	}
	y, m, d := time.Now().UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}
