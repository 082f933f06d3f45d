package test

import (
	"fmt"
	"net/http"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/allsource/guard/fsm"
)

// BenchmarkAuditGroupCommit measures audit entries committed per second
// through the audit batcher (group commit) of a 3-server loopback cluster:
// entries added on the leader, and on a follower (which sends its batches to
// the leader). One op is one entry; entries/s and the process's CPU time per
// entry are reported.
func BenchmarkAuditGroupCommit(b *testing.B) {
	batch := 0 // the default
	if v := os.Getenv("AUDIT_BATCH"); v != "" {
		batch, _ = strconv.Atoi(v)
	}
	e := idCluster(b, 3, func(n *inprocNode) { n.cfg.Identity.AuditBatch = batch })
	e.must(201, 0, "POST", "/v1/tenants", e.opCred(), map[string]string{"id": "acme"}, nil)
	for _, where := range []string{"leader", "follower"} {
		b.Run(where, func(b *testing.B) {
			l := e.c.leader(b)
			nd := l
			if where == "follower" {
				nd = e.c.followers()[0]
			}
			batcher := nd.srv.API().AuditBatcher()
			in := fsm.AuditInput{Tenant: "acme", Action: fsm.ActionAuthFailed, Outcome: fsm.OutcomeFailure,
				Actor: fsm.Actor{Kind: fsm.PrincipalAPIKey, ID: "0123456789abcdef0123456789abcdef"}, Resource: "GET /v1/tenants/acme/users",
				IP: "192.0.2.10", UserAgent: "bench/1.0", Error: "API key secret does not match"}
			startIdx := l.srv.FSM().AppliedIndex()
			b.ResetTimer()
			start := time.Now()
			cpu0 := processCPU(b)
			var wg sync.WaitGroup
			const producers = 4
			for p := range producers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := p; i < b.N; i += producers {
						in := in
						in.Time = time.Now()
						in.RequestID = fmt.Sprintf("b-%d", i)
						batcher.Add(in)
					}
				}()
			}
			wg.Wait()
			waitFor(b, 5*time.Minute, "the batcher to deliver", func() bool { return nd.srv.API().AuditIdle() })
			el := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/el.Seconds(), "entries/s")
			// CPU of the whole process (three servers, the producers) per
			// entry: steadier than the rate on a shared machine, and what
			// bounds it (2 cores / this = the rate on an idle machine at best).
			b.ReportMetric(float64((processCPU(b)-cpu0).Nanoseconds())/float64(b.N)/1000, "cpu-µs/entry")
			b.ReportMetric(float64(l.srv.FSM().AppliedIndex()-startIdx), "raft-entries")
		})
	}
}

// BenchmarkLogin measures successful logins per second over HTTP on one
// server at the default Argon2id parameters (m=19 MiB, t=2, p=1), with
// GOMAXPROCS concurrent hashes: each login verifies the password, commits a
// CmdLogin through raft and mints an EdDSA token.
func BenchmarkLogin(b *testing.B) {
	e := benchCluster(b, 1)
	b.ResetTimer()
	start := time.Now()
	b.SetParallelism(2)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r := e.call(0, "POST", "/v1/auth/login", cred{}, map[string]string{"tenant": "acme", "username": "ann", "password": "pw-ann-correct-horse"})
			if r.status != http.StatusOK {
				b.Errorf("login: %s", r)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "logins/s")
}

// benchCluster starts an identity cluster for a benchmark, with tenant acme
// and admin ann.
func benchCluster(b *testing.B, n int) *idEnv {
	e := idCluster(b, n, nil)
	e.must(201, 0, "POST", "/v1/tenants", e.opCred(), map[string]string{"id": "acme"}, nil)
	e.createUser("acme", "ann", "admin")
	return e
}

// BenchmarkAuthenticatedRead measures GET /v1/auth/me over loopback HTTP on
// one server: the full authentication path (credential front end, signature
// or keyed-hash check, revocation, user, role and tenant checks in the
// replicated state) plus HTTP, per credential kind.
func BenchmarkAuthenticatedRead(b *testing.B) {
	e := benchCluster(b, 1)
	tok := e.login("acme", "ann", "pw-ann-correct-horse").AccessToken
	key := e.createKey("acme", bearerCred("ann", tok), "bench", "readonly", "")
	for _, c := range []cred{bearerCred("jwt-eddsa", tok), {name: "api-key", apiKey: key.Key}} {
		b.Run(c.name, func(b *testing.B) {
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if r := e.call(0, "GET", "/v1/auth/me", c, nil); r.status != http.StatusOK {
						b.Errorf("me: %s", r)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
		})
	}
}
