package test

import (
	"fmt"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/allsource/guard/fsm"
	"github.com/allsource/guard/threat"
)

// The threat replay tests generate audit streams — what the servers and
// edges would have committed during an attack or a quiet week — and replay
// them through the detectors. The streams are deterministic: every test run
// sees the same entries, so scores and factors can be asserted exactly.

// threatStream builds per-tenant audit chains in time order.
type threatStream struct {
	entries []*fsm.AuditEntry
	seq     map[string]uint64
}

func newThreatStream() *threatStream { return &threatStream{seq: map[string]uint64{}} }

// add appends an entry; Seq and Index are assigned when the stream is sorted.
func (s *threatStream) add(e fsm.AuditEntry) *fsm.AuditEntry {
	if e.Outcome == "" {
		e.Outcome = fsm.OutcomeSuccess
	}
	e.Time = e.Time.UTC()
	s.entries = append(s.entries, &e)
	return &e
}

// sorted orders the stream by time (stable), numbers each tenant's chain,
// and returns it.
func (s *threatStream) sorted() []*fsm.AuditEntry {
	sort.SliceStable(s.entries, func(i, j int) bool { return s.entries[i].Time.Before(s.entries[j].Time) })
	for i, e := range s.entries {
		s.seq[e.Tenant]++
		e.Seq = s.seq[e.Tenant]
		e.Index = uint64(i + 1)
		e.ID = fmt.Sprintf("%016x-0001", e.Index)
	}
	return s.entries
}

// Actors of the streams.
func threatUserActor(id, name string, role string) fsm.Actor {
	return fsm.Actor{Kind: fsm.PrincipalUser, ID: id, Name: name, Role: role}
}

func threatKeyActor(id, name, role string) fsm.Actor {
	return fsm.Actor{Kind: fsm.PrincipalAPIKey, ID: id, Name: name, Role: role}
}

// hexUser is a deterministic 32-hex user or key id.
func hexUser(n int) string { return fmt.Sprintf("%032x", n+0x1000) }

// loginFailure is a login_failed entry as identity's CmdLoginFailures writes it.
func loginFailure(tenant, userID, username, ip string, at time.Time) fsm.AuditEntry {
	res := "user/" + username
	if userID != "" {
		res = "user/" + userID
	}
	return fsm.AuditEntry{Tenant: tenant, Time: at, Action: fsm.ActionLoginFailed,
		Actor: fsm.Actor{Kind: fsm.PrincipalUser, ID: userID, Name: username}, Resource: res,
		Outcome: fsm.OutcomeFailure, IP: ip, Error: "invalid credentials"}
}

func loginSuccess(tenant, userID, username, role, ip string, at time.Time) fsm.AuditEntry {
	return fsm.AuditEntry{Tenant: tenant, Time: at, Action: fsm.ActionLoginSucceeded,
		Actor: threatUserActor(userID, username, role), Resource: "user/" + userID, IP: ip,
		Metadata: map[string]string{"username": username}}
}

// replayThreat runs entries through a fresh engine and returns every detection.
func replayThreat(t testing.TB, cfg threat.Config, entries []*fsm.AuditEntry) []threat.Detection {
	t.Helper()
	eng, err := threat.NewEngine(cfg)
	if err != nil {
		t.Fatalf("NewEngine: %v", err)
	}
	var out []threat.Detection
	for _, e := range entries {
		out = append(out, eng.Process(e)...)
	}
	return out
}

// Monday 2 March 2026, 00:00 UTC: the streams' week starts here.
var threatMonday = time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)

// normalOffice adds a week (days days from threatMonday) of office work for
// one tenant: admins and developers acting on weekdays 09:00-17:00 every ~20
// minutes, logging in each morning from their usual address, a service key
// reading steadily around the clock, and the odd mistyped password.
func normalOffice(s *threatStream, tenant string, days int, base int) {
	type person struct {
		id, name, role, ip string
		actions            []fsm.Action
	}
	people := []person{
		{hexUser(base), "ann", "admin", "192.0.2.10", []fsm.Action{fsm.ActionUserUpdated, fsm.ActionUserCreated, fsm.ActionAPIKeyCreated, fsm.ActionConfigChanged}},
		{hexUser(base + 1), "dev", "developer", "192.0.2.11", []fsm.Action{"data_write", "schema_updated", fsm.ActionAPIKeyCreated}},
		{hexUser(base + 2), "rita", "readonly", "192.0.2.12", []fsm.Action{"report_viewed"}},
	}
	key := threatKeyActor(hexUser(base+50), "etl", "serviceaccount")
	for d := 0; d < days; d++ {
		day := threatMonday.AddDate(0, 0, d)
		for w := 0; w < 288; w++ { // the service key reads 30-50 times per 5 minutes, all day
			at := day.Add(time.Duration(w) * 5 * time.Minute).Add(17 * time.Second)
			s.add(fsm.AuditEntry{Tenant: tenant, Time: at, Action: fsm.ActionAPIKeyUsed, Actor: key,
				Resource: "api-key/" + key.ID, Metadata: map[string]string{"count": strconv.Itoa(30 + (w*7+d)%21)}})
		}
		if wd := day.Weekday(); wd == time.Saturday || wd == time.Sunday {
			continue
		}
		for pi, p := range people {
			start := day.Add(9*time.Hour + time.Duration(pi*3+d)*time.Minute)
			if (d+pi)%3 == 0 { // a typo before the morning login
				s.add(loginFailure(tenant, p.id, p.name, p.ip, start.Add(-30*time.Second)))
			}
			s.add(loginSuccess(tenant, p.id, p.name, p.role, p.ip, start))
			for k := 0; k < 24; k++ {
				at := start.Add(time.Duration(k)*20*time.Minute + time.Duration((k*37+pi*11)%300)*time.Second)
				act := p.actions[(k+d)%len(p.actions)]
				meta := map[string]string{}
				res := "thing/" + strconv.Itoa(k)
				switch act {
				case fsm.ActionAPIKeyCreated:
					meta["role"] = "readonly" // below the creator's ceiling
					res = "api-key/" + hexUser(base+1000+d*100+k)
				case fsm.ActionUserCreated:
					meta["role"] = "developer"
				}
				s.add(fsm.AuditEntry{Tenant: tenant, Time: at, Action: act, Actor: threatUserActor(p.id, p.name, p.role),
					Resource: res, IP: p.ip, Metadata: meta})
			}
		}
	}
}
