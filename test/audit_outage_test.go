package test

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestAuditSurvivesQuorumLoss: refusals audited on a server that has lost its
// quorum wait in its audit batcher, retried, for as long as the outage lasts
// — past the point where the batcher used to give up (its eighth attempt,
// after about 6 s) — and are committed once the other servers are back; none
// is dropped.
func TestAuditSurvivesQuorumLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("system test: skipped with -short")
	}
	e := idCluster(t, 3, nil)
	e.must(201, 0, "POST", "/v1/tenants", e.opCred(), map[string]string{"id": "acme", "name": "Acme"}, nil)
	waitFor(t, scaled(10*time.Second), "acme on every server", func() bool {
		for i := range e.nodes {
			if e.callOnce(i, "GET", "/v1/tenants/acme?consistency=stale", e.opCred(), nil).status != 200 {
				return false
			}
		}
		return true
	})

	// Keep one server; stop the two others (the leader among them if it is
	// not the one kept): no quorum is left.
	keep := 2
	for i, n := range e.nodes {
		if i != keep {
			e.c.stop(n)
		}
	}
	var rids []string
	for range 5 {
		r := e.callOnce(keep, "GET", "/v1/tenants/acme/users?consistency=stale", bearerCred("forged", "eyJhbGciOiJFZERTQSJ9.e30.c2ln"), nil)
		if r.status != http.StatusUnauthorized {
			t.Fatalf("forged token during the outage: %s, want 401", r)
		}
		rids = append(rids, r.rid)
	}
	waitFor(t, scaled(60*time.Second), "the audit batcher to keep retrying past its eighth attempt", func() bool {
		return e.c.logs.contains(`msg="audit batch not committed yet; still retrying"`)
	})

	for i, n := range e.nodes {
		if i != keep {
			e.c.start(n)
		}
	}
	waitFor(t, scaled(60*time.Second), "the refusals audited during the outage to be committed", func() bool {
		r := e.callOnce(keep, "GET", "/v1/audit?limit=1000&consistency=stale", e.opCred(), nil)
		if r.status != 200 {
			return false
		}
		for _, rid := range rids {
			if !strings.Contains(string(r.body), rid) {
				return false
			}
		}
		return true
	})
	m := e.must(200, keep, "GET", "/metrics", e.opCred(), nil, nil)
	if !strings.Contains(string(m.body), "\nallsource_audit_dropped_total 0\n") {
		t.Fatalf("audit entries were dropped: %s", grepLines(string(m.body), "allsource_audit_"))
	}
}
