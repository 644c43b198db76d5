package deid

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nhs-hub/hub/ingest"
)

// Report says what de-identification did; it holds counts and hashes only.
type Report struct {
	Domain         string           `json:"domain"`
	KeyFingerprint string           `json:"key_fingerprint"`
	PolicyHash     string           `json:"policy_hash"`
	Policy         Policy           `json:"policy"`
	Rows           map[string]int64 `json:"rows"`
	KAnonymity     KAnonymity       `json:"k_anonymity"`
	// EventsFrom and EventsTo span the published event dates.
	EventsFrom string `json:"events_from,omitempty"`
	EventsTo   string `json:"events_to,omitempty"`
}

// A Deidentifier consumes ingest's batches (its Emit method is an
// [ingest.Emit]) and writes de-identified Parquet parts to a Sink.
// Patients are held, without identifiers, until the k-anonymity check has
// seen them all; event batches stream straight through.
type Deidentifier struct {
	policy  Policy
	key     *Key
	sink    Sink
	log     *slog.Logger
	tr      *transformer
	writers map[ingest.Table]*tableWriter
	ctx     context.Context

	patients []patientRow
	intern   map[string]string
	kanon    KAnonymity
	flushed  bool
}

// New returns a Deidentifier writing to sink. ctx bounds its writes.
func New(ctx context.Context, policy Policy, key *Key, sink Sink, mem memory.Allocator, logger *slog.Logger) (*Deidentifier, error) {
	if err := policy.Validate(); err != nil {
		return nil, err
	}
	if key == nil {
		return nil, fmt.Errorf("no pseudonymisation key")
	}
	if mem == nil {
		mem = memory.DefaultAllocator
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	d := &Deidentifier{policy: policy, key: key, sink: sink, ctx: ctx, log: logger.With("component", "deid"),
		writers: map[ingest.Table]*tableWriter{}, intern: map[string]string{}}
	d.tr = &transformer{policy: policy, ps: NewPseudonymiser(key, policy.Domain, policy.PseudonymBytes), schemas: Schemas(policy), mem: mem}
	for _, t := range ingest.Tables {
		d.writers[t] = newTableWriter(ctx, sink, t.String(), d.tr.schemas[t])
	}
	return d, nil
}

// Emit takes one identifiable batch from ingest and releases it.
func (d *Deidentifier) Emit(_ context.Context, t ingest.Table, rec arrow.RecordBatch) error {
	defer rec.Release()
	if t == ingest.Patients {
		d.patients = d.tr.bufferPatients(rec, d.patients, d.intern)
		return nil
	}
	if err := d.flushPatients(); err != nil {
		return err
	}
	out := d.tr.event(t, rec)
	defer out.Release()
	return d.writers[t].write(out)
}

// flushPatients runs the k-anonymity check and writes the patients table.
func (d *Deidentifier) flushPatients() error {
	if d.flushed {
		return nil
	}
	d.flushed = true
	d.kanon = kanonymise(d.patients, d.policy.K)
	d.log.Info("k-anonymity", "k", d.policy.K, "patients", d.kanon.Patients, "generalised", d.kanon.Generalised, "suppressed", d.kanon.Suppressed)
	const batch = 64 * 1024
	for from := 0; from < len(d.patients); from += batch {
		rec := d.tr.patientBatch(d.patients[from:min(from+batch, len(d.patients))])
		err := d.writers[ingest.Patients].write(rec)
		rec.Release()
		if err != nil {
			return err
		}
	}
	d.patients, d.intern = nil, nil
	return nil
}

// Close finishes every table and returns the report. Publishing (the
// manifest) is the caller's next step.
func (d *Deidentifier) Close() (*Report, error) {
	if err := d.flushPatients(); err != nil {
		return nil, err
	}
	rep := &Report{Domain: d.policy.Domain, KeyFingerprint: d.key.Fingerprint(), PolicyHash: d.policy.Hash(),
		Policy: d.policy, Rows: map[string]int64{}, KAnonymity: d.kanon}
	if d.tr.dated {
		rep.EventsFrom = d.tr.minDate.FormattedString()
		rep.EventsTo = d.tr.maxDate.FormattedString()
	}
	for _, t := range ingest.Tables {
		if err := d.writers[t].close(); err != nil {
			return nil, err
		}
		rep.Rows[t.String()] = d.writers[t].rows
	}
	return rep, nil
}

// Abort closes any open part without finishing the dataset.
func (d *Deidentifier) Abort() {
	for _, w := range d.writers {
		if w.w != nil {
			w.w.Close()
		}
	}
}

// Schemas returns the published schemas of this Deidentifier's policy.
func (d *Deidentifier) Schemas() map[ingest.Table]*arrow.Schema { return d.tr.schemas }
