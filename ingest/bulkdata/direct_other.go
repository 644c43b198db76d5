//go:build !linux

package bulkdata

// oDirect is 0 where the pull does not ask for O_DIRECT: files go through
// the page cache.
const oDirect = 0
