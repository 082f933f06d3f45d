package threat

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/allsource/guard/fsm"
	"github.com/prometheus/client_golang/prometheus"
)

// Webhook headers. The signature is HMAC-SHA-256 over "<timestamp>.<body>"
// with the shared secret, hex-encoded, as "v1=<hex>"; receivers recompute
// it and refuse timestamps too far from their clock (replays).
const (
	HeaderTimestamp = "X-Allsource-Timestamp"
	HeaderSignature = "X-Allsource-Signature"
	HeaderDelivery  = "X-Allsource-Delivery"
)

// WebhookConfig configures a Webhook.
type WebhookConfig struct {
	URL    string
	Secret []byte // at least 16 bytes
	// MinLevel is the lowest recommended level sent (default alert).
	MinLevel fsm.ResponseLevel
	// QueueSize bounds the anomalies waiting for delivery (default 1000);
	// when full, new ones are dropped and counted.
	QueueSize int
	// MaxAttempts per anomaly (default 6), with exponential backoff from
	// BaseBackoff (default 500 ms) up to MaxBackoff (default 1 min), jittered.
	MaxAttempts int
	BaseBackoff time.Duration
	MaxBackoff  time.Duration
	Timeout     time.Duration // per attempt (default 10 s)
	Client      *http.Client
	Now         func() time.Time
	// After waits between attempts (tests inject one); default time.After.
	After      func(time.Duration) <-chan time.Time
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Webhook delivers anomalies to an HTTP endpoint: a signed JSON body, retried
// with exponential backoff, from a bounded queue, by one worker (Run).
type Webhook struct {
	cfg       WebhookConfig
	queue     chan *fsm.Anomaly
	delivered prometheus.Counter
	failed    prometheus.Counter
	dropped   prometheus.Counter
	attempts  prometheus.Counter
}

// NewWebhook checks the configuration.
func NewWebhook(cfg WebhookConfig) (*Webhook, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("threat: webhook URL must be http(s)://host/...")
	}
	if len(cfg.Secret) < 16 {
		return nil, errors.New("threat: webhook secret must be at least 16 bytes")
	}
	if cfg.MinLevel == "" {
		cfg.MinLevel = fsm.LevelAlert
	}
	if !cfg.MinLevel.Valid() {
		return nil, fmt.Errorf("threat: unknown webhook level %q", cfg.MinLevel)
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 1000
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 6
	}
	if cfg.BaseBackoff <= 0 {
		cfg.BaseBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = time.Minute
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.After == nil {
		cfg.After = time.After
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	w := &Webhook{cfg: cfg, queue: make(chan *fsm.Anomaly, cfg.QueueSize),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{Name: "allsource_webhook_delivered_total", Help: "Anomalies delivered to the webhook."}),
		failed:    prometheus.NewCounter(prometheus.CounterOpts{Name: "allsource_webhook_failed_total", Help: "Anomalies given up on after every attempt."}),
		dropped:   prometheus.NewCounter(prometheus.CounterOpts{Name: "allsource_webhook_dropped_total", Help: "Anomalies dropped because the queue was full."}),
		attempts:  prometheus.NewCounter(prometheus.CounterOpts{Name: "allsource_webhook_attempts_total", Help: "Webhook delivery attempts."}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(w.delivered, w.failed, w.dropped, w.attempts)
	}
	return w, nil
}

// Publish queues a for delivery if its level is at least MinLevel. It never
// blocks: a full queue drops a.
func (w *Webhook) Publish(a *fsm.Anomaly) {
	if a.Level.Rank() < w.cfg.MinLevel.Rank() {
		return
	}
	select {
	case w.queue <- a:
	default:
		w.dropped.Inc()
		w.cfg.Logger.Warn("webhook queue full; anomaly alert dropped", "id", a.ID)
	}
}

// WebhookEvent is the JSON body of a delivery.
type WebhookEvent struct {
	Type    string       `json:"type"` // "anomaly"
	SentAt  time.Time    `json:"sent_at"`
	Anomaly *fsm.Anomaly `json:"anomaly"`
}

// Run delivers queued anomalies until ctx ends.
func (w *Webhook) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case a := <-w.queue:
			if err := w.deliver(ctx, a); err != nil && ctx.Err() == nil {
				w.failed.Inc()
				w.cfg.Logger.Warn("webhook delivery failed", "id", a.ID, "err", err)
			}
		}
	}
}

// errPermanent marks an answer that retrying will not change.
var errPermanent = errors.New("permanent")

func (w *Webhook) deliver(ctx context.Context, a *fsm.Anomaly) error {
	var last error
	for attempt := 0; attempt < w.cfg.MaxAttempts; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-w.cfg.After(w.backoff(attempt)):
			}
		}
		w.attempts.Inc()
		last = w.send(ctx, a)
		if last == nil {
			w.delivered.Inc()
			return nil
		}
		if errors.Is(last, errPermanent) {
			return last
		}
	}
	return last
}

// backoff is the jittered wait before attempt n (n ≥ 1): a random point in
// [d/2, d) with d = min(MaxBackoff, BaseBackoff·2^(n-1)).
func (w *Webhook) backoff(n int) time.Duration {
	d := w.cfg.BaseBackoff << min(n-1, 30)
	if d <= 0 || d > w.cfg.MaxBackoff {
		d = w.cfg.MaxBackoff
	}
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

func (w *Webhook) send(ctx context.Context, a *fsm.Anomaly) error {
	now := w.cfg.Now()
	body, err := json.Marshal(WebhookEvent{Type: "anomaly", SentAt: now.UTC(), Anomaly: a})
	if err != nil {
		return fmt.Errorf("%w: %v", errPermanent, err)
	}
	ts := strconv.FormatInt(now.Unix(), 10)
	rctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, w.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%w: %v", errPermanent, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "allsource-guard-webhook/1")
	req.Header.Set(HeaderTimestamp, ts)
	req.Header.Set(HeaderSignature, "v1="+SignWebhook(w.cfg.Secret, ts, body))
	req.Header.Set(HeaderDelivery, a.ID)
	resp, err := w.cfg.Client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return fmt.Errorf("webhook answered %s", resp.Status)
	}
	return fmt.Errorf("%w: webhook answered %s", errPermanent, resp.Status)
}

// SignWebhook returns the hex HMAC-SHA-256 of "<ts>.<body>" under secret.
func SignWebhook(secret []byte, ts string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// VerifyWebhook checks a delivery's signature header and that its timestamp
// is within tolerance of now (a receiver's side; also used by the tests).
func VerifyWebhook(secret []byte, tsHeader, sigHeader string, body []byte, now time.Time, tolerance time.Duration) error {
	ts, err := strconv.ParseInt(tsHeader, 10, 64)
	if err != nil {
		return errors.New("webhook: bad timestamp")
	}
	if d := now.Sub(time.Unix(ts, 0)); d > tolerance || d < -tolerance {
		return errors.New("webhook: timestamp outside tolerance")
	}
	sig, ok := strings.CutPrefix(sigHeader, "v1=")
	if !ok {
		return errors.New("webhook: unknown signature scheme")
	}
	got, err := hex.DecodeString(sig)
	if err != nil {
		return errors.New("webhook: malformed signature")
	}
	want, _ := hex.DecodeString(SignWebhook(secret, tsHeader, body))
	if !hmac.Equal(got, want) {
		return errors.New("webhook: signature mismatch")
	}
	return nil
}
