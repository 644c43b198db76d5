// Package cohorts will answer aggregate cohort queries over a published
// dataset version through DuckDB with differential privacy, within a
// project's privacy budget. It is the subject of the cohort-service issue
// and holds no code yet.
package cohorts
