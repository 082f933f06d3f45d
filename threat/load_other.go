//go:build !unix

package threat

// CPUSampler reports no CPU load where getrusage is not available.
type CPUSampler struct{}

// Sample returns 0.
func (s *CPUSampler) Sample() float64 { return 0 }
