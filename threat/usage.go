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
	"time"

	"github.com/allsource/guard/internal/tally"
)

// UsagePath is the server endpoint edges post UsageReports to (join token in
// X-Allsource-Join-Token; followers forward it to the leader).
const UsagePath = "/v1/internal/usage"

// UsageMeter reads, per tenant, the requests (in cost units) an edge was
// asked for and the ones it admitted from the edge's tally.Meter, which the
// decision pipeline records into once per request (fleet limiting reads the
// same counts).
type UsageMeter struct {
	mu     sync.Mutex
	reader *tally.Reader
}

// NewUsageMeter returns a meter reading counts; its first Take has
// everything recorded so far.
func NewUsageMeter(counts *tally.Meter) *UsageMeter {
	return &UsageMeter{reader: counts.NewReader()}
}

// Take returns the counts since the previous Take (tenants without requests
// since are left out).
func (m *UsageMeter) Take() map[string]TenantUsage {
	m.mu.Lock()
	got := m.reader.Take()
	m.mu.Unlock()
	out := make(map[string]TenantUsage, len(got))
	for t, c := range got {
		out[t] = TenantUsage{Demand: float64(c.Demand), Admitted: float64(c.Admitted)}
	}
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
