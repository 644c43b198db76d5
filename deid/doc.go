// Package deid will de-identify ingest's Arrow batches: keyed HMAC-SHA256
// pseudonyms per pseudonymisation domain, dropped direct identifiers,
// generalised quasi-identifiers, a k-anonymity check, and Parquet output.
// It is the subject of the de-identification issue and holds no code yet.
package deid
