// Package testkey makes pseudonymisation keys for tests: fixed, distinct
// by a seed, and random-looking enough for deid.NewKey.
package testkey

import "crypto/sha256"

// Bytes is a 32-byte key derived from seed.
func Bytes(seed byte) []byte {
	k := sha256.Sum256([]byte{'h', 'u', 'b', seed})
	return k[:]
}
