// Package cohorts answers aggregate cohort queries over a published
// dataset version with differential privacy, within a project's budget.
//
// A [Query] (JSON, see docs/cohort-language.md) is validated by
// [ParseQuery] against allow-lists and limits, compiled by [Compile] into
// parameterised DuckDB SQL without a single literal, and run by an
// [Engine]: an in-memory DuckDB that can read only the version's verified
// parts. The exact results never leave the package: release adds noise
// from github.com/google/differential-privacy, and the project's [Ledger]
// charges the budget and records the answer in one synced append before
// the [Service] returns it. Which projects exist, and what each was
// granted, the service asks of its [Projects] (the governance store)
// before every query; package api serves it over HTTP.
package cohorts
