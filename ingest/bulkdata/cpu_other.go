//go:build !linux

package bulkdata

// cpuTimes cannot tell the machine's idle time here: downloads asked for
// ahead drain on the other signs alone.
func cpuTimes() (idle, total uint64, ok bool) { return 0, 0, false }
