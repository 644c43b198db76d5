package ingest

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
)

// nationalList builds an NDOP-sized list: 3.5 million valid NHS numbers.
func nationalList(n int) ([]byte, []uint64) {
	r := rand.New(rand.NewPCG(1, 2))
	var buf bytes.Buffer
	nums := make([]uint64, 0, n)
	for len(nums) < n {
		base := 400000000 + r.Uint64N(400000000)
		c, ok := NHSCheckDigit(base)
		if !ok {
			continue
		}
		v := base*10 + uint64(c)
		nums = append(nums, v)
		fmt.Fprintf(&buf, "%010d\n", v)
	}
	return buf.Bytes(), nums
}

// BenchmarkLoadOptOuts loads a national-scale list (3.5 M numbers); it
// reports the heap the loaded list holds. Targets: under 2 s, under 100 MB.
func BenchmarkLoadOptOuts(b *testing.B) {
	data, _ := nationalList(3_500_000)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	var heap uint64
	for i := 0; i < b.N; i++ {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		o, err := LoadOptOuts(context.Background(), bytes.NewReader(data))
		if err != nil || o.Len() < 3_400_000 {
			b.Fatal(err, o.Len())
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		heap = after.HeapAlloc - before.HeapAlloc
		runtime.KeepAlive(o)
	}
	b.ReportMetric(float64(heap)/1e6, "MB-held")
}

// BenchmarkOptOutLookup looks up numbers, half present, in a national list.
func BenchmarkOptOutLookup(b *testing.B) {
	data, nums := nationalList(3_500_000)
	o, _ := LoadOptOuts(context.Background(), bytes.NewReader(data))
	probe := make([]uint64, 1<<16)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range probe {
		if i%2 == 0 {
			probe[i] = nums[r.IntN(len(nums))]
		} else {
			probe[i] = 9000000000 + r.Uint64N(999999999)
		}
	}
	b.ResetTimer()
	hits := 0
	for i := 0; i < b.N; i++ {
		if o.Has(probe[i&(len(probe)-1)]) {
			hits++
		}
	}
	if b.N > 1000 && hits == 0 {
		b.Fatal("no hits")
	}
}

// BenchmarkIDSetAdd builds the patients' sets as ingest does: a million
// numbers in file order, from a small set that grows.
func BenchmarkIDSetAdd(b *testing.B) {
	for _, ordered := range []bool{false, true} {
		b.Run(map[bool]string{false: "plain", true: "ordered"}[ordered], func(b *testing.B) {
			for b.Loop() {
				s := newIDSet(1 << 16)
				if ordered {
					s = newOrderedIDSet(1 << 16)
				}
				for n := uint64(1); n <= 1_000_000; n++ {
					s.Add(9000000000 + n*11)
				}
				if s.Len() != 1_000_000 {
					b.Fatal(s.Len())
				}
			}
		})
	}
}

func BenchmarkParseNHSNumber(b *testing.B) {
	in := []byte("943 476 5919")
	for i := 0; i < b.N; i++ {
		if _, err := ParseNHSNumber(in); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCSVRecord splits 8 MB of the synthetic encounters table into
// fields, as the workers do.
func BenchmarkCSVRecord(b *testing.B) {
	var buf bytes.Buffer
	for i := 0; buf.Len() < 8<<20; i++ {
		fmt.Fprintf(&buf, "E%d-%d,99900%05d,outpatient,2022-09-%02d,2022-09-%02d,GP practice B850%02d\n", i/12, i%12, i/12, i%28+1, i%28+1, i%100)
	}
	data := buf.Bytes()
	b.SetBytes(int64(len(data)))
	var fields [][]byte
	var scratch []byte
	for b.Loop() {
		for rest := data; len(rest) > 0; {
			var n int
			fields, scratch, n, _, _ = csvRecord(rest, fields, scratch)
			rest = rest[n:]
		}
	}
}
