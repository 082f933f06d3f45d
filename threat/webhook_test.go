package threat

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/allsource/guard/fsm"
	"github.com/prometheus/client_golang/prometheus"
)

// metricValue reads a counter from reg by name (0 when absent).
func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

var hookSecret = []byte("0123456789abcdef-webhook")

type hookReceiver struct {
	mu       sync.Mutex
	statuses []int // answers to give, in order; then 200
	got      []WebhookEvent
	bad      []string
	calls    int
	done     chan struct{}
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls++
	if err := VerifyWebhook(hookSecret, r.Header.Get(HeaderTimestamp), r.Header.Get(HeaderSignature), body, time.Now(), 5*time.Minute); err != nil {
		h.bad = append(h.bad, err.Error())
	}
	if len(h.statuses) > 0 {
		st := h.statuses[0]
		h.statuses = h.statuses[1:]
		w.WriteHeader(st)
		if st < 500 && st != http.StatusTooManyRequests {
			close(h.done)
		}
		return
	}
	var ev WebhookEvent
	if err := json.Unmarshal(body, &ev); err != nil || r.Header.Get(HeaderDelivery) != ev.Anomaly.ID {
		h.bad = append(h.bad, "body or delivery header")
	}
	h.got = append(h.got, ev)
	w.WriteHeader(http.StatusNoContent)
	close(h.done)
}

// instantAfter records the waits asked for and does not wait.
type instantAfter struct {
	mu    sync.Mutex
	waits []time.Duration
}

func (a *instantAfter) after(d time.Duration) <-chan time.Time {
	a.mu.Lock()
	a.waits = append(a.waits, d)
	a.mu.Unlock()
	ch := make(chan time.Time, 1)
	ch <- time.Now()
	return ch
}

func newHook(t *testing.T, recv *hookReceiver, queue int) (*Webhook, *instantAfter, *prometheus.Registry) {
	t.Helper()
	srv := httptest.NewServer(recv)
	t.Cleanup(srv.Close)
	ia := &instantAfter{}
	reg := prometheus.NewRegistry()
	w, err := NewWebhook(WebhookConfig{URL: srv.URL + "/hook", Secret: hookSecret, After: ia.after, Registerer: reg, QueueSize: queue,
		BaseBackoff: 500 * time.Millisecond, MaxBackoff: 4 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return w, ia, reg
}

func runHook(t *testing.T, w *Webhook) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func anomaly(id string, lvl fsm.ResponseLevel) *fsm.Anomaly {
	return &fsm.Anomaly{ID: id, Tenant: "acme", Kind: fsm.AnomalyBruteForce, Score: 0.75, Level: lvl}
}

func waitClosed(t *testing.T, ch chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("the receiver was never satisfied")
	}
}

// TestWebhookRetriesWithBackoff: two 503s, then success: three attempts,
// waits jittered within [d/2, d) for d = 500 ms then 1 s; the body is signed.
func TestWebhookRetriesWithBackoff(t *testing.T) {
	recv := &hookReceiver{statuses: []int{503, 503}, done: make(chan struct{})}
	w, ia, _ := newHook(t, recv, 10)
	runHook(t, w)
	w.Publish(anomaly("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", fsm.LevelBlock))
	waitClosed(t, recv.done)
	recv.mu.Lock()
	defer recv.mu.Unlock()
	if recv.calls != 3 || len(recv.got) != 1 || len(recv.bad) != 0 || recv.got[0].Anomaly.ID != "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
		t.Fatalf("calls %d, got %d, problems %v", recv.calls, len(recv.got), recv.bad)
	}
	ia.mu.Lock()
	defer ia.mu.Unlock()
	if len(ia.waits) != 2 || ia.waits[0] < 250*time.Millisecond || ia.waits[0] >= 500*time.Millisecond ||
		ia.waits[1] < 500*time.Millisecond || ia.waits[1] >= time.Second {
		t.Errorf("backoff waits = %v", ia.waits)
	}
}

// TestWebhookPermanentFailure: a 400 is not retried.
func TestWebhookPermanentFailure(t *testing.T) {
	recv := &hookReceiver{statuses: []int{400}, done: make(chan struct{})}
	w, _, reg := newHook(t, recv, 10)
	runHook(t, w)
	w.Publish(anomaly("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", fsm.LevelAlert))
	waitClosed(t, recv.done)
	deadline := time.Now().Add(5 * time.Second)
	for metricValue(t, reg, "allsource_webhook_failed_total") != 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // poll interval
	}
	if f, a := metricValue(t, reg, "allsource_webhook_failed_total"), metricValue(t, reg, "allsource_webhook_attempts_total"); f != 1 || a != 1 {
		t.Fatalf("failed %v attempts %v, want 1 and 1", f, a)
	}
}

// TestWebhookBoundedQueue: with no worker, a queue of 3 keeps 3 and drops
// the rest; monitor-level anomalies are not sent at all.
func TestWebhookBoundedQueue(t *testing.T) {
	w, _, reg := newHook(t, &hookReceiver{done: make(chan struct{})}, 3)
	w.Publish(anomaly("cccccccccccccccccccccccccccccccc", fsm.LevelMonitor))
	for i := 0; i < 8; i++ {
		w.Publish(anomaly("dddddddddddddddddddddddddddddddd", fsm.LevelRevokeAccess))
	}
	if d := metricValue(t, reg, "allsource_webhook_dropped_total"); len(w.queue) != 3 || d != 5 {
		t.Fatalf("queued %d dropped %v, want 3 and 5", len(w.queue), d)
	}
}

func TestVerifyWebhookRefuses(t *testing.T) {
	body := []byte(`{"type":"anomaly"}`)
	now := time.Unix(1_800_000_000, 0)
	ts := "1800000000"
	sig := "v1=" + SignWebhook(hookSecret, ts, body)
	if err := VerifyWebhook(hookSecret, ts, sig, body, now, time.Minute); err != nil {
		t.Fatalf("valid delivery refused: %v", err)
	}
	for name, c := range map[string]struct {
		ts, sig string
		body    []byte
		now     time.Time
	}{
		"edited body":   {ts, sig, []byte(`{"type":"anomalY"}`), now},
		"old":           {ts, sig, body, now.Add(2 * time.Minute)},
		"other secret":  {ts, "v1=" + SignWebhook([]byte("another-secret-0123"), ts, body), body, now},
		"other ts":      {"1800000001", sig, body, now},
		"no scheme":     {ts, SignWebhook(hookSecret, ts, body), body, now},
		"bad timestamp": {"x", sig, body, now},
	} {
		if err := VerifyWebhook(hookSecret, c.ts, c.sig, c.body, c.now, time.Minute); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := NewWebhook(WebhookConfig{URL: "ftp://x", Secret: hookSecret}); err == nil {
		t.Error("ftp URL accepted")
	}
	if _, err := NewWebhook(WebhookConfig{URL: "https://x/y", Secret: []byte("short")}); err == nil {
		t.Error("short secret accepted")
	}
}
