package bulkdata

import "syscall"

// oDirect opens a file past the page cache.
const oDirect = syscall.O_DIRECT
