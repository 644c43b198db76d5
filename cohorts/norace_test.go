//go:build !race

package cohorts

const raceEnabled = false
