// Package secretfile writes a new secret file: a key that must never
// replace another (a pseudonymisation key, an audit key, a client's
// private key), readable by its owner alone.
package secretfile

import (
	"os"
)

// Create writes data to a new file at path, mode 0600. If path exists it
// writes nothing and returns an error wrapping fs.ErrExist; a write that
// fails leaves no file.
func Create(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}
