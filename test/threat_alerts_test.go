package test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/allsource/guard/fsm"
	"github.com/allsource/guard/internal/server"
	"github.com/allsource/guard/threat"
)

// TestThreatAlertsAndAPI: a brute force against one server raises a signed
// webhook alert and the per-type Prometheus counter; the anomaly is listed
// and read by the tenant's admin (not by a developer, not by another
// tenant), filtered by kind, undone over the API; the policy is read and
// written with its rules (global blocks are the operator's).
func TestThreatAlertsAndAPI(t *testing.T) {
	if testing.Short() {
		t.Skip("system test: skipped with -short")
	}
	secret := "webhook-secret-0123456789"
	var mu sync.Mutex
	var deliveries []threat.WebhookEvent
	var problems []string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		if err := threat.VerifyWebhook([]byte(secret), r.Header.Get(threat.HeaderTimestamp), r.Header.Get(threat.HeaderSignature),
			body, time.Now(), time.Minute); err != nil {
			problems = append(problems, err.Error())
		}
		var ev threat.WebhookEvent
		if err := json.Unmarshal(body, &ev); err != nil {
			problems = append(problems, err.Error())
		}
		deliveries = append(deliveries, ev)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(hook.Close)
	c, n, op := threatServer(t, func(cfg *server.Config) {
		cfg.Threat.WebhookURL, cfg.Threat.WebhookSecret = hook.URL, secret
	})
	api := newAPIClient(scaled(10 * time.Second))
	addr := n.addr()
	for _, ten := range []string{"acme", "beta"} {
		api.must(t, http.StatusCreated, http.MethodPost, addr, "/v1/tenants", op, map[string]string{"id": ten})
	}
	const pw = "correct-horse-battery-42"
	users := map[string]string{}
	for _, u := range []struct{ tenant, name, role string }{
		{"acme", "boss", "admin"}, {"acme", "dev", "developer"}, {"acme", "victim", "readonly"}, {"beta", "other", "admin"}} {
		var v struct{ ID string }
		mustEventually(t, api, http.StatusCreated, http.MethodPost, addr, "/v1/tenants/"+u.tenant+"/users", op,
			map[string]string{"username": u.name, "password": pw, "role": u.role}).decode(t, &v)
		users[u.name] = v.ID
	}
	token := func(tenant, name string) string {
		st, a := login(t, api, addr, map[string]string{"tenant": tenant, "username": name, "password": pw})
		if st != http.StatusOK {
			t.Fatalf("login %s: %d %+v", name, st, a)
		}
		return a.AccessToken
	}
	boss, dev, other := token("acme", "boss"), token("acme", "dev"), token("beta", "other")

	for i := 0; i < 5; i++ {
		attackLogin(t, api, c, "victim", "203.0.113.66")
	}
	// Creating the two admins outside business hours (8–19 on weekdays)
	// is itself a privilege-escalation anomaly, delivered too: the test
	// looks at the brute force and counts whatever else came.
	var brute []threat.WebhookEvent
	threatWait(t, 10*time.Second, "the webhook delivery", func() bool {
		mu.Lock()
		defer mu.Unlock()
		brute = brute[:0]
		for _, d := range deliveries {
			if d.Type == "anomaly" && d.Anomaly != nil && d.Anomaly.Kind == fsm.AnomalyBruteForce {
				brute = append(brute, d)
			}
		}
		return len(brute) >= 1
	})
	mu.Lock()
	if len(problems) > 0 || len(brute) != 1 {
		t.Fatalf("webhook: problems %v, brute-force deliveries %+v", problems, brute)
	}
	id := brute[0].Anomaly.ID
	mu.Unlock()

	threatWait(t, 10*time.Second, "the delivery counter to match the deliveries", func() bool {
		metrics := string(api.must(t, http.StatusOK, http.MethodGet, addr, "/metrics", op, nil).Body)
		mu.Lock()
		n := len(deliveries)
		mu.Unlock()
		return strings.Contains(metrics, `allsource_anomalies_total{level="block",type="brute_force"} 1`) &&
			strings.Contains(metrics, "allsource_webhook_delivered_total "+strconv.Itoa(n)+"\n")
	})

	var page struct {
		Anomalies []*fsm.Anomaly `json:"anomalies"`
	}
	api.must(t, http.StatusOK, http.MethodGet, addr, "/v1/tenants/acme/anomalies?kind=brute_force", boss, nil).decode(t, &page)
	if len(page.Anomalies) != 1 || page.Anomalies[0].ID != id || page.Anomalies[0].Subject.UserID != users["victim"] {
		t.Fatalf("anomalies for the admin = %+v", page.Anomalies)
	}
	api.must(t, http.StatusOK, http.MethodGet, addr, "/v1/tenants/acme/anomalies?kind=velocity", boss, nil).decode(t, &page)
	if len(page.Anomalies) != 0 {
		t.Errorf("kind filter: %+v", page.Anomalies)
	}
	api.must(t, http.StatusBadRequest, http.MethodGet, addr, "/v1/tenants/acme/anomalies?kind=gremlins", boss, nil)
	api.must(t, http.StatusForbidden, http.MethodGet, addr, "/v1/tenants/acme/anomalies", dev, nil)
	api.must(t, http.StatusNotFound, http.MethodGet, addr, "/v1/tenants/acme/anomalies", other, nil)
	api.must(t, http.StatusNotFound, http.MethodPost, addr, "/v1/tenants/acme/anomalies/"+id+"/undo", other, nil)
	api.must(t, http.StatusNotFound, http.MethodGet, addr, "/v1/tenants/acme/anomalies/"+strings.Repeat("0", 32), boss, nil)
	var one fsm.Anomaly
	api.must(t, http.StatusOK, http.MethodGet, addr, "/v1/tenants/acme/anomalies/"+id, boss, nil).decode(t, &one)
	if len(one.Factors) == 0 || one.Score < 0.7 || len(one.Actions) != 2 {
		t.Fatalf("anomaly = %+v", one)
	}

	var undone fsm.Anomaly
	api.must(t, http.StatusOK, http.MethodPost, addr, "/v1/tenants/acme/anomalies/"+id+"/undo", boss, nil).decode(t, &undone)
	if undone.UndoneAt.IsZero() || undone.UndoneBy != "user:"+users["boss"] {
		t.Fatalf("undo = %+v", undone)
	}
	api.must(t, http.StatusPreconditionFailed, http.MethodPost, addr, "/v1/tenants/acme/anomalies/"+id+"/undo", boss, nil)
	if st, _ := login(t, api, addr, map[string]string{"tenant": "acme", "username": "victim", "password": pw}); st != http.StatusOK {
		t.Errorf("the victim cannot log in after the undo: %d", st)
	}

	var pol map[string]any
	api.must(t, http.StatusOK, http.MethodGet, addr, "/v1/tenants/acme/threat-policy", boss, nil).decode(t, &pol)
	if pol["lock_user_for"] != "15m0s" || pol["max_level"] != "revoke_access" || pol["auto_respond"] != true {
		t.Errorf("default policy = %v", pol)
	}
	api.must(t, http.StatusOK, http.MethodPut, addr, "/v1/tenants/acme/threat-policy", boss, map[string]any{"lock_user_for": "1h"})
	api.must(t, http.StatusForbidden, http.MethodPut, addr, "/v1/tenants/acme/threat-policy", boss, map[string]any{"block_ip_scope": "global"})
	api.must(t, http.StatusBadRequest, http.MethodPut, addr, "/v1/tenants/acme/threat-policy", boss, map[string]any{"lock_user_for": "soon"})
	api.must(t, http.StatusForbidden, http.MethodPut, addr, "/v1/tenants/acme/threat-policy", dev, map[string]any{"lock_user_for": "1h"})
	api.must(t, http.StatusOK, http.MethodPut, addr, "/v1/tenants/acme/threat-policy", op, map[string]any{"block_ip_scope": "global"})
	api.must(t, http.StatusOK, http.MethodGet, addr, "/v1/tenants/acme/threat-policy", boss, nil).decode(t, &pol)
	if pol["lock_user_for"] != "1h0m0s" || pol["block_ip_scope"] != "global" {
		t.Errorf("policy after the changes = %v", pol)
	}
	api.must(t, http.StatusForbidden, http.MethodGet, addr, "/v1/anomalies", boss, nil)
	api.must(t, http.StatusOK, http.MethodGet, addr, "/v1/anomalies", op, nil)
}

func grepLines(s string, subs ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, sub := range subs {
			if strings.Contains(l, sub) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
