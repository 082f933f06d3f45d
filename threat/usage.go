package threat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// UsagePath is the server endpoint edges post UsageReports to (join token in
// X-Allsource-Join-Token; followers forward it to the leader).
const UsagePath = "/v1/internal/usage"

// UsageMeter counts, per tenant, the requests (in cost units) an edge was
// asked for and the ones it admitted. Record is the hot path: lock-free once
// the tenant has a cell (a map load and one or two atomic adds).
type UsageMeter struct {
	cells sync.Map // tenant → *usageCell
}

type usageCell struct {
	demand, admitted atomic.Uint64
}

// NewUsageMeter returns an empty meter.
func NewUsageMeter() *UsageMeter { return &UsageMeter{} }

// Record notes one request for tenant costing cost tokens, admitted or not.
func (m *UsageMeter) Record(tenant string, cost int, admitted bool) {
	if cost < 1 {
		cost = 1
	}
	v, ok := m.cells.Load(tenant)
	if !ok {
		v, _ = m.cells.LoadOrStore(tenant, &usageCell{})
	}
	c := v.(*usageCell)
	c.demand.Add(uint64(cost))
	if admitted {
		c.admitted.Add(uint64(cost))
	}
}

// Take returns the counts since the previous Take and starts again. Tenants
// without requests since are dropped from the meter (a Record racing with
// that drop can be lost: the tenant was idle for a whole interval).
func (m *UsageMeter) Take() map[string]TenantUsage {
	out := map[string]TenantUsage{}
	m.cells.Range(func(k, v any) bool {
		c := v.(*usageCell)
		d, a := c.demand.Swap(0), c.admitted.Swap(0)
		if d == 0 {
			m.cells.CompareAndDelete(k, v)
			return true
		}
		out[k.(string)] = TenantUsage{Demand: float64(d), Admitted: float64(min(a, d))}
		return true
	})
	return out
}

// UsageReporterConfig configures a UsageReporter.
type UsageReporterConfig struct {
	Edge  string
	Meter *UsageMeter
	// Servers returns the base URLs (scheme://host:port) of the servers to
	// try, in order.
	Servers   func() []string
	JoinToken string
	Client    *http.Client
	Interval  time.Duration // default 5 s
	Load      func() Load
	Logger    *slog.Logger
}

// UsageReporter sends the meter's counts to a server every Interval.
type UsageReporter struct {
	cfg UsageReporterConfig
	seq uint64
}

// NewUsageReporter checks the configuration.
func NewUsageReporter(cfg UsageReporterConfig) (*UsageReporter, error) {
	if cfg.Edge == "" || cfg.Meter == nil || cfg.Servers == nil {
		return nil, errors.New("threat: usage reporter needs an edge name, a meter and servers")
	}
	if cfg.Interval == 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 5 * time.Second}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &UsageReporter{cfg: cfg}, nil
}

// Run reports every Interval until ctx ends. A report no server took is
// dropped: usage is a rate, and the next one describes the present.
func (r *UsageReporter) Run(ctx context.Context) {
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if err := r.Send(ctx, now.Sub(last)); err != nil && ctx.Err() == nil {
				r.cfg.Logger.Debug("usage report not delivered", "err", err)
			}
			last = now
		}
	}
}

// Send takes the meter's counts for the elapsed interval and posts them.
func (r *UsageReporter) Send(ctx context.Context, interval time.Duration) error {
	r.seq++
	rep := UsageReport{Edge: r.cfg.Edge, Seq: r.seq, Interval: max(interval, 100*time.Millisecond), Tenants: r.cfg.Meter.Take()}
	if r.cfg.Load != nil {
		rep.Load = r.cfg.Load()
	}
	body, err := json.Marshal(&rep)
	if err != nil {
		return err
	}
	var last error = errors.New("no server to report to")
	for _, base := range r.cfg.Servers() {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(base, "/")+UsagePath, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Allsource-Join-Token", r.cfg.JoinToken)
		resp, err := r.cfg.Client.Do(req)
		if err != nil {
			last = err
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusOK {
			return nil
		}
		last = fmt.Errorf("%s answered %s", base, resp.Status)
	}
	return last
}
