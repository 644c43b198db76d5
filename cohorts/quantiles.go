package cohorts

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/google/differential-privacy/go/v3/noise"
)

// The quantile tree follows the DP library's dpagg.BoundedQuantiles
// (Google's quantile tree: height 4, branching 16, ranks clamped to
// [0.005, 0.995]) with the library's Laplace noise. The library keeps its
// noisy counts private, so no interval can be derived from its release;
// this tree keeps the counts it has noised, and the interval is drawn
// from them (quantileInterval).
const (
	qtHeight    = 4
	qtBranching = 16
	qtTolerance = 1e-6
	qtRoot      = 0
)

// A quantileTree releases quantiles of clamped values, one per patient.
// Every node on a value's path from its leaf up (the root excepted)
// counts it, so a patient changes qtHeight counts by 1: each count gets
// Laplace noise of scale qtHeight/ε. Counts are noised when first read
// and kept, so every rank (and every interval draw) reads one release.
type quantileTree struct {
	lower, upper float64
	eps          float64
	leaves       int
	firstLeaf    int
	raw          []int64
	noised       []float64 // NaN until noised
	// laplace adds Laplace noise of a scale to a count: the DP library's
	// (releaseLaplace) outside tests of the interval's coverage.
	laplace func(c, scale float64) (float64, error)
}

// releaseLaplace is the DP library's Laplace noise, its sensitivity given
// as a scale (L1 sensitivity over ε).
func releaseLaplace(c, scale float64) (float64, error) {
	v, err := noise.Laplace().AddNoiseFloat64(c, 1, scale, 1, 0)
	if err != nil {
		return 0, fmt.Errorf("noise: %w", err)
	}
	return v, nil
}

func newQuantileTree(lower, upper, eps float64, hist []valueCount) *quantileTree {
	nodes := (int(math.Pow(qtBranching, qtHeight+1)) - 1) / (qtBranching - 1)
	leaves := int(math.Pow(qtBranching, qtHeight))
	t := &quantileTree{lower: lower, upper: upper, eps: eps, leaves: leaves, firstLeaf: nodes - leaves,
		raw: make([]int64, nodes), noised: make([]float64, nodes), laplace: releaseLaplace}
	for i := range t.noised {
		t.noised[i] = math.NaN()
	}
	for _, h := range hist {
		v := math.Min(math.Max(h.v, lower), upper)
		for i := t.leaf(v); i != qtRoot; i = (i - 1) / qtBranching {
			t.raw[i] += h.n
		}
	}
	return t
}

// leaf is the index of the leaf holding value v.
func (t *quantileTree) leaf(v float64) int {
	k := int((v - t.lower) / (t.upper - t.lower) * float64(t.leaves))
	return t.firstLeaf + min(k, t.leaves-1)
}

// count is node i's noisy count.
func (t *quantileTree) count(i int) (float64, error) {
	if c := t.noised[i]; !math.IsNaN(c) {
		return c, nil
	}
	c, err := t.laplace(float64(t.raw[i]), qtHeight/t.eps)
	if err != nil {
		return 0, err
	}
	t.noised[i] = c
	return c, nil
}

// edges are the smallest and the bound above the largest value under
// node i.
func (t *quantileTree) edges(i int) (lo, hi float64) {
	l, r := i, i
	for l < t.firstLeaf {
		l, r = l*qtBranching+1, (r+1)*qtBranching
	}
	at := func(k int) float64 { return t.lower + (t.upper-t.lower)*float64(k-t.firstLeaf)/float64(t.leaves) }
	return at(l), at(r + 1)
}

// descend finds rank's value, reading node counts through read: from the
// root down, the child whose cumulative count first reaches rank's share
// of its siblings' total, the rank carried into it; the value is
// interpolated within the node where the descent stops. Unlike the
// library, it keeps every noisy count as it is (no clamping at 0, no
// dropping of small children): clamping adds to empty subtrees and
// dropping takes from small ones, biases that moved a median of 50,000
// patients by more than its interval. Taken as they are, the counts'
// cumulative sums are unbiased, and only a positive count can be crossed.
func (t *quantileTree) descend(rank float64, read func(int) (float64, error)) (float64, int, error) {
	rank = math.Max(math.Min(rank, 0.995), 0.005)
	i := qtRoot
	var cs [qtBranching]float64
	for i < t.firstLeaf {
		first := i*qtBranching + 1
		total := 0.0
		for k := range cs {
			c, err := read(first + k)
			if err != nil {
				return 0, 0, err
			}
			cs[k] = c
			total += c
		}
		if total <= 0 {
			break
		}
		target, partial, next := rank*total, 0.0, -1
		for k, c := range cs {
			if c > 0 {
				next = k
				if partial+c >= target-qtTolerance*total {
					break
				}
			}
			partial += c
		}
		if next < 0 {
			break
		}
		rank = math.Min(math.Max((target-partial)/cs[next], 0), 1)
		i = first + next
	}
	lo, hi := t.edges(i)
	return (1-rank)*lo + rank*hi, i, nil
}

// quantileDraws is how many draws quantileInterval takes, as meanDraws.
const quantileDraws = 4000

// quantile releases rank's value and its 95% interval. The interval is
// post-processing of the noisy counts (no budget): the descent is run
// quantileDraws times on counts from which fresh noise of the same scale
// is taken away (c̃ - X', the pivot meanInterval uses too); the interval
// runs from the lower edge of the node the 2.5% draw stopped in to the
// upper edge of the 97.5% draw's node, so that a quantile that is one of
// the data's values (an age in whole years) is not missed by
// interpolation. The draws are seeded by the released value.
func (t *quantileTree) quantile(rank float64) (v, lo, hi float64, err error) {
	v, _, err = t.descend(rank, t.count)
	if err != nil {
		return 0, 0, 0, err
	}
	r := rand.New(rand.NewPCG(math.Float64bits(v), math.Float64bits(rank)))
	scale := qtHeight / t.eps
	type draw struct {
		v    float64
		node int
	}
	draws := make([]draw, quantileDraws)
	for d := range draws {
		// descend reads each node once, so each read draws afresh.
		read := func(i int) (float64, error) {
			c, err := t.count(i)
			return c - scale*(r.ExpFloat64()-r.ExpFloat64()), err
		}
		if draws[d].v, draws[d].node, err = t.descend(rank, read); err != nil {
			return 0, 0, 0, err
		}
	}
	slices.SortFunc(draws, func(a, b draw) int { return cmp.Compare(a.v, b.v) })
	lo, _ = t.edges(draws[int(math.Floor(Alpha/2*quantileDraws))].node)
	hi = draws[int(math.Ceil((1-Alpha/2)*quantileDraws))-1].v
	// The draws are the quantile under a flat prior on the counts; where
	// the values thin out they can all lie to one side of the release,
	// and the interval is widened to hold it.
	lo, hi = min(lo, v), max(hi, v)
	return v, lo, hi, nil
}
