//go:build race

package cohorts

// raceEnabled: the tests run under the race detector, ten times slower.
const raceEnabled = true
