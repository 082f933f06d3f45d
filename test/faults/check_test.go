//go:build linux

package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// result is one scenario's row of the report.
type result struct {
	Scenario string
	Nemesis  string
	Duration time.Duration

	Ops, Acked, Failed, Rejected, Ambiguous int // every operation, by outcome
	Writes, AckedWrites                     int
	AmbiguousCommitted                      int // ambiguous writes found in the audit log afterwards
	Unexpected                              int // 4xx answers a correct cluster never gives these clients
	UnexpectedDetails                       []string

	Lin             linResult
	StaleReads      int
	StaleViolations int

	Lost         int  // acknowledged writes missing from the audit log
	Misplaced    int  // … present, but at another index than acknowledged
	AuditOK      bool // every chain verifies on every node
	Agree        bool // every node serves byte-identical state at the same index
	ComparedAt   uint64
	AgreeDetails []string

	EdgeRequests, EdgeFailures, EdgeRevokedAccepted int // -1: no edges
	EdgePropagation                                 time.Duration
	EdgeDetails                                     []string

	Recovery      []time.Duration // per leader-loss fault: first acknowledged write after it
	StepDown      []time.Duration // per isolated leader: until it stopped claiming leadership
	IsolatedAcks  int             // writes a cut-off old leader acknowledged while cut off
	LeaderChanges int
	Elections     uint64
	Leaders       []string
	Faults        int
	Load          string // 1-minute load average when the faults began → when they ended
}

// ok reports whether the row meets every goal that is a correctness
// property (availability figures are judged by the caller).
func (r *result) ok() bool {
	return r.Lin.Violations == 0 && r.Lin.Unknown == 0 && r.StaleViolations == 0 && r.Lost == 0 && r.Misplaced == 0 &&
		r.AuditOK && r.Agree && r.IsolatedAcks == 0 && r.EdgeFailures <= 0 && r.EdgeRevokedAccepted <= 0 && r.Unexpected == 0
}

func (r *run) check(ctx context.Context) *result {
	ops := r.hist.snapshot()
	res := &result{Scenario: r.sc.name, Nemesis: r.sc.nemesis.name(), Duration: time.Since(r.hist.start),
		EdgeRequests: -1, EdgeFailures: -1, EdgeRevokedAccepted: -1, Faults: len(r.faults)}
	for _, o := range ops {
		res.Ops++
		switch o.Out {
		case outOK:
			res.Acked++
		case outFail:
			res.Failed++
		case outRejected:
			res.Rejected++
			if o.HTTP/100 == 4 {
				res.Unexpected++
				if len(res.UnexpectedDetails) < 10 {
					res.UnexpectedDetails = append(res.UnexpectedDetails, o.String())
				}
			}
		case outUnknown:
			res.Ambiguous++
		}
		if o.Kind.isWrite() {
			res.Writes++
			if o.Out == outOK {
				res.AckedWrites++
			}
		}
	}
	res.LeaderChanges, res.Elections, res.Leaders = r.mon.changes()
	for _, f := range r.faults {
		if f.leaderLoss {
			res.Recovery = append(res.Recovery, recoveryAfter(ops, f.recoverFrom, f.invokedAfter))
		}
		if f.stepDown != 0 { // an isolated leader
			res.StepDown = append(res.StepDown, f.stepDown)
			for _, o := range ops {
				if o.Node == f.oldLeader && o.Kind.isWrite() && o.Out == outOK && o.Call >= f.inPlace && o.Ret <= f.healed {
					res.IsolatedAcks++
					r.t.Errorf("%s: the cut-off old leader %s acknowledged a write: %v", r.sc.name, f.oldLeader, o)
				}
			}
		}
	}

	// Durability, audit and agreement, on the converged cluster.
	var resolved map[string]string
	dumps, idx, err := r.converge(ctx, ops)
	if err != nil {
		r.t.Errorf("%s: %v", r.sc.name, err)
	} else {
		res.ComparedAt = idx
		res.Agree, res.AgreeDetails = compareDumps(dumps)
		res.AuditOK = true
		for _, d := range dumps {
			if !d.auditOK {
				res.AuditOK = false
				res.AgreeDetails = append(res.AgreeDetails, d.node+": audit verify failed: "+d.verify)
			}
		}
		res.Lost, res.Misplaced, res.AmbiguousCommitted, resolved = checkDurability(r, ops, dumps[0])
	}

	// Linearizability and session monotonicity of what the clients saw.
	res.Lin = checkLinearizable(ops, resolved, 2*time.Minute, r.sc.name)
	res.StaleReads, res.StaleViolations, _ = checkMonotonicStaleDetails(r, ops)
	if r.edges != nil {
		res.EdgeRequests, res.EdgeFailures, res.EdgeRevokedAccepted, res.EdgePropagation, res.EdgeDetails = r.edges.results()
	}
	for _, d := range res.Lin.Details {
		r.t.Errorf("%s: linearizability: %s", r.sc.name, d)
	}
	for _, d := range res.AgreeDetails {
		r.t.Errorf("%s: %s", r.sc.name, d)
	}
	for _, d := range res.UnexpectedDetails {
		r.t.Errorf("%s: unexpected client error: %s", r.sc.name, d)
	}
	for _, d := range res.EdgeDetails {
		r.t.Errorf("%s: edge: %s", r.sc.name, d)
	}
	return res
}

func checkMonotonicStaleDetails(r *run, ops []op) (int, int, []string) {
	reads, v, details := checkMonotonicStale(ops)
	for _, d := range details {
		r.t.Errorf("%s: monotonic reads: %s", r.sc.name, d)
	}
	return reads, v, details
}

// dump is what one node serves, at consistency=stale, for every resource the
// scenario touched.
type dump struct {
	node    string
	index   uint64
	bodies  map[string][]byte // path → status and body
	audit   map[string][]auditEntry
	auditOK bool
	verify  string
}

type auditEntry struct {
	Seq       uint64            `json:"seq"`
	Index     uint64            `json:"index"`
	Action    string            `json:"action"`
	Resource  string            `json:"resource"`
	RequestID string            `json:"request_id"`
	Metadata  map[string]string `json:"metadata"`
}

// converge waits until every node has applied the same log, then reads each
// node's copy of everything the scenario touched with consistency=stale. A
// stale read answers from one bbolt read transaction of that node's own
// state, and X-Raft-Index says which applied index that state reflects; so
// when every answer of every node carries the same index, the bodies must be
// byte-identical — the FSM is deterministic and JSON encoding is (map keys
// are sorted). If any answer carries another index, something was still being
// applied; the round is repeated.
func (r *run) converge(ctx context.Context, ops []op) ([]*dump, uint64, error) {
	tenantSet := map[string]bool{}
	for _, o := range ops {
		tenantSet[o.Tenant] = true
	}
	var tenants []string
	for t := range tenantSet {
		tenants = append(tenants, t)
	}
	sort.Strings(tenants)
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		idx, err := r.c.waitConverged(ctx, 60*time.Second)
		if err != nil {
			return nil, 0, fmt.Errorf("nodes did not converge: %w", err)
		}
		var dumps []*dump
		for _, n := range r.c.nodes {
			d, err := r.dumpNode(ctx, n, tenants, idx)
			if err != nil {
				lastErr = err
				dumps = nil
				break
			}
			dumps = append(dumps, d)
		}
		if dumps != nil {
			return dumps, idx, nil
		}
	}
	return nil, 0, fmt.Errorf("could not read every node at one index: %v", lastErr)
}

func (r *run) dumpNode(ctx context.Context, n *node, tenants []string, idx uint64) (*dump, error) {
	d := &dump{node: n.id, index: idx, bodies: map[string][]byte{}, audit: map[string][]auditEntry{}}
	get := func(path string, okStatus ...int) ([]byte, int, error) {
		st, body, hdr, err := r.c.get(ctx, n, path)
		allowed := err == nil
		for _, s := range okStatus {
			allowed = allowed || st == s
		}
		if !allowed {
			return nil, st, err
		}
		got, _ := strconv.ParseUint(hdr.Get("X-Raft-Index"), 10, 64)
		if got != idx {
			return nil, st, fmt.Errorf("%s answered %s at index %d, want %d", n.id, path, got, idx)
		}
		d.bodies[path] = append([]byte(strconv.Itoa(st)+" "), body...)
		return body, st, nil
	}
	cursor := ""
	for page := 0; ; page++ {
		body, _, err := get("/v1/tenants?consistency=stale&limit=1000&cursor=" + url.QueryEscape(cursor))
		if err != nil {
			return nil, err
		}
		var p struct {
			Next string `json:"next_cursor"`
		}
		_ = json.Unmarshal(body, &p)
		if cursor = p.Next; cursor == "" {
			break
		}
	}
	for _, t := range tenants {
		if _, _, err := get("/v1/tenants/"+t+"?consistency=stale", http.StatusNotFound); err != nil {
			return nil, err
		}
		if _, _, err := get("/v1/tenants/"+t+"/rate-limit?consistency=stale", http.StatusNotFound); err != nil {
			return nil, err
		}
		if r.objectTenant(t) {
			if _, _, err := get("/v1/tenants/" + t + "/api-keys?consistency=stale&limit=1000"); err != nil {
				return nil, err
			}
			if _, _, err := get("/v1/tenants/" + t + "/ip-rules?consistency=stale"); err != nil {
				return nil, err
			}
		}
		cur := ""
		for {
			body, _, err := get("/v1/tenants/" + t + "/audit?consistency=stale&limit=1000&cursor=" + cur)
			if err != nil {
				return nil, err
			}
			var p struct {
				Entries []auditEntry `json:"entries"`
				Next    string       `json:"next_cursor"`
			}
			if err := json.Unmarshal(body, &p); err != nil {
				return nil, err
			}
			d.audit[t] = append(d.audit[t], p.Entries...)
			if cur = p.Next; cur == "" {
				break
			}
		}
	}
	body, st, err := get("/v1/audit/verify?consistency=stale", http.StatusConflict)
	if err != nil {
		return nil, err
	}
	var v struct {
		OK     bool `json:"ok"`
		Chains []struct {
			Tenant   string `json:"tenant"`
			Entries  uint64 `json:"entries"`
			FirstSeq uint64 `json:"first_seq"`
			LastSeq  uint64 `json:"last_seq"`
			OK       bool   `json:"ok"`
		} `json:"chains"`
	}
	_ = json.Unmarshal(body, &v)
	d.auditOK = st == http.StatusOK && v.OK
	for _, c := range v.Chains {
		// Gap-free: nothing was dropped by retention here, so every chain
		// holds 1..last_seq.
		if c.LastSeq > 0 && (c.FirstSeq != 1 || c.Entries != c.LastSeq) {
			d.auditOK = false
		}
	}
	// The audit pages themselves must be gap-free too.
	for t, es := range d.audit {
		for i, e := range es {
			if e.Seq != uint64(i+1) {
				d.auditOK = false
				d.verify += fmt.Sprintf("tenant %s: entry %d has seq %d; ", t, i+1, e.Seq)
				break
			}
		}
	}
	d.verify += string(bytes.TrimSpace(body))
	return d, nil
}

// compareDumps reports whether every node served the same bytes for every path.
func compareDumps(dumps []*dump) (bool, []string) {
	var details []string
	ref := dumps[0]
	for _, d := range dumps[1:] {
		if len(d.bodies) != len(ref.bodies) {
			details = append(details, fmt.Sprintf("%s served %d resources, %s %d", ref.node, len(ref.bodies), d.node, len(d.bodies)))
		}
		for p, b := range ref.bodies {
			if !bytes.Equal(b, d.bodies[p]) {
				details = append(details, fmt.Sprintf("%s and %s disagree at index %d on %s:\n  %s\n  %s", ref.node, d.node,
					ref.index, p, truncate(b), truncate(d.bodies[p])))
			}
		}
	}
	return len(details) == 0, details
}

func truncate(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "…"
	}
	return string(b)
}

// checkDurability finds every acknowledged write in the audit log: the FSM
// audits each of these commands in the tenant's chain with the request id
// the client sent, at the raft index the write was acknowledged with. A
// write that is acknowledged but absent was lost.
func checkDurability(r *run, ops []op, d *dump) (lost, misplaced, ambiguousCommitted int, resolved map[string]string) {
	resolved = map[string]string{}
	byRequest := map[string]auditEntry{}
	for _, es := range d.audit {
		for _, e := range es {
			if e.RequestID != "" {
				byRequest[e.RequestID] = e
			}
		}
	}
	wantAction := map[opKind]string{opCreate: "tenant_created", opDelete: "tenant_deleted", opSetRPM: "config_changed",
		opSuspend: "tenant_suspended", opActivate: "tenant_activated", opCreateKey: "api_key_created",
		opRevokeKey: "api_key_revoked", opAddRule: "ip_rule_added", opRemoveRule: "ip_rule_removed"}
	resourcePrefix := map[opKind]string{opCreateKey: "api-key/", opRevokeKey: "api-key/", opAddRule: "ip-rule/", opRemoveRule: "ip-rule/"}
	for _, o := range ops {
		if !o.Kind.isWrite() {
			continue
		}
		e, found := byRequest[o.RequestID]
		switch o.Out {
		case outOK:
			switch {
			case !found:
				lost++
				r.t.Errorf("%s: acknowledged write lost (not in the audit log): %v", r.sc.name, o)
			case e.Index != o.Index || e.Action != wantAction[o.Kind] ||
				o.Kind == opSetRPM && e.Metadata["requests_per_minute"] != strconv.Itoa(o.Value) ||
				o.Kind.onObject() && e.Resource != resourcePrefix[o.Kind]+o.Object:
				misplaced++
				r.t.Errorf("%s: acknowledged write %v is in the audit log as %+v", r.sc.name, o, e)
			}
		case outUnknown:
			if found {
				ambiguousCommitted++
				resolved[o.RequestID] = strings.TrimPrefix(e.Resource, resourcePrefix[o.Kind])
				if !o.Kind.onObject() {
					resolved[o.RequestID] = ""
				}
			}
		case outFail, outRejected:
			if found {
				misplaced++
				r.t.Errorf("%s: a write answered %s is in the audit log: %v as %+v", r.sc.name, o.Out, o, e)
			}
		}
	}
	return lost, misplaced, ambiguousCommitted, resolved
}
