// Package catalog will own the lake: dataset versions on a local folder or
// S3, atomic publish through a manifest written last, the data dictionary
// and provenance. It is the subject of the de-identification issue and
// holds no code yet.
package catalog
