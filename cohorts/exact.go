package cohorts

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// exact is what the engine computed for one measure before any noise. It
// is never released: only release turns it into an answer.
type exact struct {
	count int64
	// cells holds a breakdown by public keys, in the order of cellKeys.
	cells    []int64
	cellKeys [][]string
	// codes holds a breakdown by data-dependent keys.
	codes []codeCount
	// n and sum are the contributors and the clamped sum of a value.
	n   int64
	sum float64
	// hist is the clamped values and how many patients have each.
	hist []valueCount
	// rate holds a rate's denominator and numerator per interval.
	rate []ratePeriodExact
}

// ratePeriodExact is one interval of a rate before noise: the
// denominator's and the numerator's counts (cells, with By).
type ratePeriodExact struct {
	from, to time.Time
	den, num exact
}

type codeCount struct {
	system, code string
	n            int64
}

type valueCount struct {
	v float64
	n int64
}

// exact runs a plan without noise. Only release may see its result; no
// path from the HTTP API returns it.
func (e *Engine) exact(ctx context.Context, p *Plan) ([]exact, error) {
	if p.cohorts != nil {
		var out []exact
		for _, sub := range p.cohorts {
			xs, err := e.exact(ctx, sub)
			if err != nil {
				return nil, err
			}
			out = append(out, xs...)
		}
		return out, nil
	}
	out := make([]exact, len(p.Measures))
	for i, st := range p.Measures {
		if periods, ok := p.rates[i]; ok {
			for _, rp := range periods {
				den, err := e.exact(ctx, rp.den)
				if err != nil {
					return nil, err
				}
				num, err := e.exact(ctx, rp.num)
				if err != nil {
					return nil, err
				}
				out[i].rate = append(out[i].rate, ratePeriodExact{from: rp.from, to: rp.to, den: den[0], num: num[0]})
			}
			continue
		}
		rows, err := e.rows(ctx, st)
		if err != nil {
			return nil, fmt.Errorf("run measure %d: %w", i, err)
		}
		m := &p.Query.Measures[i]
		x := &out[i]
		switch {
		case m.Kind == KindCount && m.ByCode != "":
			for _, r := range rows {
				x.codes = append(x.codes, codeCount{system: str(r[0]), code: str(r[1]), n: toInt(r[2])})
			}
		case m.Kind == KindCount && len(m.By) > 0:
			domains := make([][]string, len(m.By))
			for j, k := range m.By {
				domains[j] = p.domain(k, m)
			}
			x.cellKeys = cross(domains)
			index := map[string]int{}
			for j, k := range x.cellKeys {
				index[strings.Join(k, "\x00")] = j
			}
			x.cells = make([]int64, len(x.cellKeys))
			for _, r := range rows {
				key := make([]string, len(m.By))
				for j, k := range m.By {
					key[j] = p.keyOf(k, r[j], domains[j])
				}
				x.cells[index[strings.Join(key, "\x00")]] += toInt(r[len(m.By)])
			}
		case m.Kind == KindCount:
			x.count = toInt(rows[0][0])
		case m.Kind == KindQuantiles:
			for _, r := range rows {
				x.hist = append(x.hist, valueCount{v: toFloat(r[0]), n: toInt(r[1])})
				x.n += toInt(r[1])
			}
		default:
			x.n, x.sum = toInt(rows[0][0]), toFloat(rows[0][1])
		}
	}
	return out, nil
}

// unknownCounts runs a plan's unknown counts, exactly; only release may
// see them.
func (e *Engine) unknownCounts(ctx context.Context, p *Plan) ([]int64, error) {
	var out []int64
	for _, st := range p.Unknowns {
		rows, err := e.rows(ctx, st)
		if err != nil {
			return nil, fmt.Errorf("count unknowns: %w", err)
		}
		out = append(out, toInt(rows[0][0]))
	}
	return out, nil
}

// domain is the public domain of a breakdown key, Unknown (or "none" for
// years) last.
func (p *Plan) domain(key string, m *Measure) []string {
	if key == "year" {
		from, to, _ := (&validator{q: p.Query, ids: p.ids}).yearDomain(m, "")
		var d []string
		for y := from; y <= to; y++ {
			d = append(d, strconv.Itoa(y))
		}
		return append(d, "none")
	}
	return append(append([]string{}, publicKeys[key]...), Unknown)
}

// keyOf maps a raw key value to its public domain; anything outside the
// domain counts as the domain's last key (Unknown or "none").
func (p *Plan) keyOf(key string, raw any, domain []string) string {
	other := domain[len(domain)-1]
	if raw == nil {
		return other
	}
	var s string
	switch key {
	case "age_band":
		if p.Query.IndexDate != "" {
			s = ageBand((p.idxMI - int(toInt(raw))) / 12)
		} else {
			s = str(raw)
		}
	case "year":
		s = strconv.FormatInt(toInt(raw), 10)
	default:
		s = str(raw)
	}
	for _, d := range domain {
		if d == s {
			return s
		}
	}
	return other
}

// cross is the cartesian product of domains, first key slowest.
func cross(domains [][]string) [][]string {
	out := [][]string{{}}
	for _, d := range domains {
		var next [][]string
		for _, prefix := range out {
			for _, v := range d {
				next = append(next, append(append([]string{}, prefix...), v))
			}
		}
		out = next
	}
	return out
}

func str(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case []byte:
		return string(x)
	case nil:
		return ""
	}
	return fmt.Sprint(v)
}

func toInt(v any) int64 {
	switch x := v.(type) {
	case int64:
		return x
	case int32:
		return int64(x)
	case int16:
		return int64(x)
	case int8:
		return int64(x)
	case int:
		return int64(x)
	case uint64:
		return int64(x)
	case uint32:
		return int64(x)
	case float64:
		return int64(x)
	}
	return 0
}

func toFloat(v any) float64 {
	switch x := v.(type) {
	case float64:
		return x
	case float32:
		return float64(x)
	case nil:
		return 0
	}
	return float64(toInt(v))
}
