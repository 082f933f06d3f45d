package fsm

import (
	"math"
	"time"
)

// RateLimit is a tenant's rate-limit policy. Edges enforce it fleet-wide.
type RateLimit struct {
	Tenant            string `json:"tenant"`
	Tier              string `json:"tier,omitempty"` // empty when set explicitly
	RequestsPerMinute int    `json:"requests_per_minute"`
	Burst             int    `json:"burst"`
	// RouteCosts maps a route class to the tokens one request of it costs (default 1).
	RouteCosts map[string]int `json:"route_costs,omitempty"`
	// Adaptive bounds and the reason for the current figure, set by the adaptive
	// limiter (threat-detection issue); zero when not in use.
	MinRequestsPerMinute int `json:"min_requests_per_minute,omitempty"`
	MaxRequestsPerMinute int `json:"max_requests_per_minute,omitempty"`
	// BaseRequestsPerMinute is the figure the operator set, which the
	// adaptive limiter decays back to; ObservedRequestsPerMinute is its
	// baseline of the tenant's normal demand, replicated so that a new
	// leader starts warm.
	BaseRequestsPerMinute     int       `json:"base_requests_per_minute,omitempty"`
	ObservedRequestsPerMinute float64   `json:"observed_requests_per_minute,omitempty"`
	Reason                    string    `json:"reason,omitempty"`
	UpdatedAt                 time.Time `json:"updated_at"`
}

// Tiers are the predefined policies of the original system.
var Tiers = map[string]RateLimit{
	"free":         {RequestsPerMinute: 60, Burst: 100},
	"professional": {RequestsPerMinute: 600, Burst: 1000},
	"unlimited":    {RequestsPerMinute: 10000, Burst: 20000},
	"dev":          {RequestsPerMinute: 100000, Burst: 200000},
}

// SetRateLimitCmd is the payload of CmdSetRateLimit: either a tier, or explicit
// figures.
type SetRateLimitCmd struct {
	Tenant               string         `json:"tenant"`
	Tier                 string         `json:"tier,omitempty"`
	RequestsPerMinute    int            `json:"requests_per_minute,omitempty"`
	Burst                int            `json:"burst,omitempty"`
	RouteCosts           map[string]int `json:"route_costs,omitempty"`
	MinRequestsPerMinute int            `json:"min_requests_per_minute,omitempty"`
	MaxRequestsPerMinute int            `json:"max_requests_per_minute,omitempty"`
	// Base and Observed are set by the adaptive limiter; an operator's
	// change leaves them zero, making its figure the new base.
	BaseRequestsPerMinute     int     `json:"base_requests_per_minute,omitempty"`
	ObservedRequestsPerMinute float64 `json:"observed_requests_per_minute,omitempty"`
	Reason                    string  `json:"reason,omitempty"`
}

const maxRPM = 100_000_000

// Validate checks the request and resolves a tier into figures.
func (c *SetRateLimitCmd) Validate() *Error {
	if err := ValidTenantID(c.Tenant); err != nil {
		return errf(CodeInvalidArgument, "%v", err)
	}
	if c.Tier != "" {
		t, ok := Tiers[c.Tier]
		if !ok {
			return errf(CodeInvalidArgument, "unknown tier %q (want free, professional, unlimited or dev)", c.Tier)
		}
		if c.RequestsPerMinute != 0 || c.Burst != 0 {
			return errf(CodeInvalidArgument, "give either a tier or requests_per_minute and burst, not both")
		}
		c.RequestsPerMinute, c.Burst = t.RequestsPerMinute, t.Burst
	}
	if c.RequestsPerMinute <= 0 || c.RequestsPerMinute > maxRPM {
		return errf(CodeInvalidArgument, "requests_per_minute must be between 1 and %d", maxRPM)
	}
	if c.Burst <= 0 {
		c.Burst = c.RequestsPerMinute
	}
	if c.Burst > maxRPM {
		return errf(CodeInvalidArgument, "burst must be at most %d", maxRPM)
	}
	if len(c.RouteCosts) > 256 {
		return errf(CodeInvalidArgument, "at most 256 route classes")
	}
	for k, v := range c.RouteCosts {
		if e := validName("route class", k, 64); e != nil || k == "" {
			return errf(CodeInvalidArgument, "bad route class name")
		}
		if v < 1 || v > c.Burst {
			return errf(CodeInvalidArgument, "cost of route class %q must be between 1 and the burst", k)
		}
	}
	if c.MinRequestsPerMinute < 0 || c.MaxRequestsPerMinute < 0 ||
		(c.MaxRequestsPerMinute > 0 && c.MinRequestsPerMinute > c.MaxRequestsPerMinute) {
		return errf(CodeInvalidArgument, "adaptive bounds must satisfy 0 <= min <= max")
	}
	if c.BaseRequestsPerMinute < 0 || c.BaseRequestsPerMinute > maxRPM || math.IsNaN(c.ObservedRequestsPerMinute) ||
		c.ObservedRequestsPerMinute < 0 || c.ObservedRequestsPerMinute > maxRPM {
		return errf(CodeInvalidArgument, "base and observed rates must be between 0 and %d", maxRPM)
	}
	return validName("reason", c.Reason, 512)
}

func applySetRateLimit(w *wtx, c *Command) (any, *Error) {
	var p SetRateLimitCmd
	mustDecodePayload(c, &p)
	if e := requireOperator(c.Header.Principal); e != nil {
		return nil, e
	}
	if e := p.Validate(); e != nil {
		return nil, e
	}
	if _, ok := w.reader().Tenant(p.Tenant); !ok {
		return nil, errf(CodeNotFound, "tenant %q not found", p.Tenant)
	}
	base := p.BaseRequestsPerMinute
	if base == 0 {
		base = p.RequestsPerMinute
	}
	lim := &RateLimit{Tenant: p.Tenant, Tier: p.Tier, RequestsPerMinute: p.RequestsPerMinute, Burst: p.Burst,
		RouteCosts: p.RouteCosts, MinRequestsPerMinute: p.MinRequestsPerMinute,
		MaxRequestsPerMinute: p.MaxRequestsPerMinute, BaseRequestsPerMinute: base,
		ObservedRequestsPerMinute: p.ObservedRequestsPerMinute, Reason: p.Reason, UpdatedAt: w.now()}
	putJSON(w.tx.Bucket(bLimits), []byte(p.Tenant), lim)
	w.changed(ChangeLimit, p.Tenant, p.Tenant, false)
	meta := map[string]string{"requests_per_minute": itoa(lim.RequestsPerMinute), "burst": itoa(lim.Burst)}
	if p.Reason != "" {
		meta["reason"] = p.Reason
	}
	w.audit(p.Tenant, ActionConfigChanged, "rate-limit/"+p.Tenant, OutcomeSuccess, meta)
	return lim, nil
}

// RateLimit returns a tenant's policy.
func (r *Reader) RateLimit(tenant string) (*RateLimit, bool) {
	var l RateLimit
	if !getJSON(r.tx.Bucket(bLimits), []byte(tenant), &l) {
		return nil, false
	}
	return &l, true
}

// AdaptiveRateLimits returns the policies with adaptive bounds (min and max
// set): the tenants the adaptive limiter manages.
func (r *Reader) AdaptiveRateLimits() []*RateLimit {
	var out []*RateLimit
	_ = r.tx.Bucket(bLimits).ForEach(func(k, v []byte) error {
		var l RateLimit
		mustUnmarshal(k, v, &l)
		if l.MinRequestsPerMinute > 0 && l.MaxRequestsPerMinute > 0 {
			out = append(out, &l)
		}
		return nil
	})
	return out
}
