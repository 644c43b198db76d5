package deid

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"math"
	"os"
)

// MinKeyBytes is the shortest pseudonymisation key accepted.
const MinKeyBytes = 32

// ErrKeyTooShort is returned for a key of fewer than MinKeyBytes bytes.
var ErrKeyTooShort = errors.New("pseudonymisation key is shorter than 32 bytes")

// ErrKeyWeak is returned for a key whose bytes are too alike to be a
// secret (a run of one letter, a short pattern repeated).
var ErrKeyWeak = errors.New("pseudonymisation key is not random enough (too few distinct bytes): make one with `head -c 32 /dev/urandom > key`")

// Keys must hold at least minDistinct distinct byte values and minEntropy
// bits of empirical Shannon entropy a byte. 32 random bytes hold about
// 30 distinct values and 4.85 bits; 32 hex digits, 16 and 4; a run of one
// letter, 1 and 0.
const (
	minDistinct = 8
	minEntropy  = 3.0
)

// A Key is a pseudonymisation key. It never prints its secret.
type Key struct {
	secret []byte
}

// LoadKey reads a key file: at least 32 bytes, either raw or as hex text
// (64 or more hex digits, surrounding whitespace ignored).
func LoadKey(path string) (*Key, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read key file: %w", err)
	}
	return NewKey(raw)
}

// NewKey makes a key from raw bytes or hex text.
func NewKey(raw []byte) (*Key, error) {
	secret := raw
	if t := bytes.TrimSpace(raw); len(t) >= 2*MinKeyBytes {
		if b, err := hex.DecodeString(string(t)); err == nil {
			secret = b
		}
	}
	if len(secret) < MinKeyBytes {
		return nil, ErrKeyTooShort
	}
	if distinct, bits := byteEntropy(secret); distinct < minDistinct || bits < minEntropy {
		return nil, ErrKeyWeak
	}
	return &Key{secret: bytes.Clone(secret)}, nil
}

// String hides the secret.
func (k *Key) String() string { return "deid.Key(" + k.Fingerprint() + ")" }

// Fingerprint identifies the key without revealing it: the first 16 hex
// digits of HMAC-SHA256(key, "hub key fingerprint v1").
func (k *Key) Fingerprint() string {
	m := hmac.New(sha256.New, k.secret)
	m.Write([]byte("hub key fingerprint v1"))
	return hex.EncodeToString(m.Sum(nil))[:16]
}

// domainKey derives the key of one pseudonymisation domain.
func (k *Key) domainKey(domain string) []byte {
	m := hmac.New(sha256.New, k.secret)
	m.Write([]byte("hub pseudonymisation domain v1\x00" + domain))
	return m.Sum(nil)
}

// A Pseudonymiser makes pseudonyms under one domain's key. It reuses one
// HMAC, so it is not safe for concurrent use: give each goroutine its own.
type Pseudonymiser struct {
	mac hash.Hash
	n   int
	sum []byte
	in  []byte
}

// NewPseudonymiser returns a pseudonymiser of n-byte pseudonyms.
func NewPseudonymiser(k *Key, domain string, n int) *Pseudonymiser {
	return &Pseudonymiser{mac: hmac.New(sha256.New, k.domainKey(domain)), n: n, sum: make([]byte, 0, sha256.Size)}
}

// Patient returns the pseudonym of an NHS number; the slice is reused.
func (p *Pseudonymiser) Patient(nhs uint64) []byte {
	p.in = append(p.in[:0], "nhs:0000000000"...)
	for i := len(p.in) - 1; nhs > 0; i-- {
		p.in[i] = byte('0' + nhs%10)
		nhs /= 10
	}
	return p.of(p.in)
}

// Token returns the pseudonym of another identifier (an encounter id) in
// its own namespace; the slice is reused.
func (p *Pseudonymiser) Token(namespace string, v []byte) []byte {
	p.in = append(append(append(p.in[:0], namespace...), ':'), v...)
	return p.of(p.in)
}

func (p *Pseudonymiser) of(in []byte) []byte {
	p.mac.Reset()
	p.mac.Write(in)
	p.sum = p.mac.Sum(p.sum[:0])
	return p.sum[:p.n]
}

// Shift returns a patient's date shift in days, in [-max, max] without 0.
func (p *Pseudonymiser) Shift(nhs uint64, max int) int32 {
	b := p.Token("shift", []byte{byte(nhs >> 56), byte(nhs >> 48), byte(nhs >> 40), byte(nhs >> 32), byte(nhs >> 24), byte(nhs >> 16), byte(nhs >> 8), byte(nhs)})
	v := int(uint32(b[0])<<24|uint32(b[1])<<16|uint32(b[2])<<8|uint32(b[3])) % (2 * max)
	if v >= max {
		return int32(v - 2*max)
	}
	return int32(v + 1)
}

// byteEntropy is b's count of distinct byte values and its empirical
// Shannon entropy in bits a byte.
func byteEntropy(b []byte) (distinct int, bits float64) {
	var n [256]int
	for _, c := range b {
		n[c]++
	}
	for _, k := range n {
		if k > 0 {
			distinct++
			p := float64(k) / float64(len(b))
			bits -= p * math.Log2(p)
		}
	}
	return distinct, bits
}
