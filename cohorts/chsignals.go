//go:build chdb && linux

package cohorts

import (
	"syscall"
	"unsafe"
)

// faultSignals are the signals the Go runtime turns into panics (a nil
// pointer, an integer divided by zero): ClickHouse installs crash
// handlers for them when its session starts, after which a Go panic that
// any recover would catch (net/http's, for one) killed the whole process
// instead, after minutes, with a bare "segmentation fault".
var faultSignals = []syscall.Signal{syscall.SIGSEGV, syscall.SIGBUS, syscall.SIGFPE, syscall.SIGILL}

// kernelSigaction holds a signal's disposition as the kernel keeps it,
// copied out and back verbatim (32 bytes cover amd64's and arm64's).
type kernelSigaction [4]uint64

// keepGoFaultHandlers runs start (which may install other handlers) and
// puts back the Go runtime's handlers for the fault signals.
func keepGoFaultHandlers(start func() error) error {
	saved := make([]kernelSigaction, len(faultSignals))
	for i, s := range faultSignals {
		if _, _, e := syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(s), 0, uintptr(unsafe.Pointer(&saved[i])), 8, 0, 0); e != 0 {
			return e
		}
	}
	err := start()
	for i, s := range faultSignals {
		syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(s), uintptr(unsafe.Pointer(&saved[i])), 0, 8, 0, 0)
	}
	return err
}
