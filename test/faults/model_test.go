//go:build linux

package faults

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"
)

// The linearizability model: every tenant is an independent object (porcupine
// checks one partition per tenant) whose state is whether it exists, its
// status and its rate limit in requests per minute. It is the sequential
// specification of the FSM's tenant and rate-limit commands as the API
// exposes them:
//
//	create    → ok and (active, the free tier's 60 rpm) if absent; conflict if present
//	delete    → ok and absent if present; not_found if absent
//	set-rpm v → ok and rpm = v if present; not_found if absent
//	suspend, activate → ok and status set if present; not_found if absent
//	read-rpm, read-status → the current value, or not_found if absent
//
// A write whose outcome is unknown (timeout, 503, broken connection) is given
// an infinite return time: it may take effect at any point after its call, or
// never (porcupine may order it after everything else). Reads with unknown
// outcomes, and operations that were definitely never applied, are left out.
//
// Many pending writes make the check exponential, so ambiguous writes are
// first resolved against the audit log of the converged cluster (see
// checkDurability): every one of these commands leaves an audit entry with the
// client's request id, so a write absent from the fully replicated log (every
// node holds the same log and has committed all of it, and no client is left)
// never took effect and is dropped, and one present did take effect at some
// unknown time after its call and stays pending. Trusting the audit log here
// loses nothing: if a write the log calls absent had changed the state, a
// read would have seen its unique value and the check would fail.

type tenantState struct {
	Exists bool
	Status string
	RPM    int
}

// freeTierRPM is the rate limit a tenant created with tier "free" starts with
// (fsm.Tiers["free"]).
const freeTierRPM = 60

type modelInput struct {
	Kind   opKind
	Value  int
	Client int
}

type modelOutput struct {
	Known  bool // false: the write's outcome is unknown
	OK     bool // 2xx; otherwise Code says which business error
	Code   string
	Value  int
	Status string
}

func tenantStep(state, input, output any) (bool, any) {
	s := state.(tenantState)
	in := input.(modelInput)
	out := output.(modelOutput)
	// next is what a write does to s, and ok whether it succeeds.
	next, ok := s, s.Exists
	switch in.Kind {
	case opCreate:
		ok = !s.Exists
		if ok {
			next = tenantState{Exists: true, Status: "active", RPM: freeTierRPM}
		}
	case opDelete:
		if ok {
			next = tenantState{}
		}
	case opSetRPM:
		if ok {
			next.RPM = in.Value
		}
	case opSuspend:
		if ok {
			next.Status = "suspended"
		}
	case opActivate:
		if ok {
			next.Status = "active"
		}
	case opReadRPM:
		if !out.OK {
			return !s.Exists && out.Code == "not_found", s
		}
		return s.Exists && out.Value == s.RPM, s
	case opReadStatus:
		if !out.OK {
			return !s.Exists && out.Code == "not_found", s
		}
		return s.Exists && out.Status == s.Status, s
	}
	if !out.Known {
		return true, next
	}
	if out.OK != ok {
		return false, s
	}
	if !ok {
		want := "not_found"
		if in.Kind == opCreate {
			want = "conflict"
		}
		return out.Code == want, s
	}
	return true, next
}

var tenantModel = porcupine.Model{
	Init: func() any { return tenantState{} },
	Step: tenantStep,
	DescribeOperation: func(input, output any) string {
		in, out := input.(modelInput), output.(modelOutput)
		arg := ""
		if in.Kind == opSetRPM {
			arg = fmt.Sprint(in.Value)
		}
		res := "?"
		switch {
		case !out.Known:
			res = "unknown"
		case !out.OK:
			res = out.Code
		case in.Kind == opReadRPM:
			res = fmt.Sprint(out.Value)
		case in.Kind == opReadStatus:
			res = out.Status
		default:
			res = "ok"
		}
		return fmt.Sprintf("c%d %s(%s) → %s", in.Client, in.Kind, arg, res)
	},
	DescribeState: func(state any) string {
		s := state.(tenantState)
		if !s.Exists {
			return "absent"
		}
		return fmt.Sprintf("%s, %d rpm", s.Status, s.RPM)
	},
}

// pendingForever is the return time of an operation whose outcome is unknown.
const pendingForever = int64(math.MaxInt64 / 2)

// porcupineOps turns the non-probe operations into porcupine's form, one
// history per tenant. committed, when known, says whether an ambiguous write
// took effect (nil: keep every ambiguous write pending).
func porcupineOps(ops []op, committed map[string]bool) map[string][]porcupine.Operation {
	byTenant := map[string][]porcupine.Operation{}
	for _, o := range ops {
		if o.Probe || o.Kind == opStaleRead || o.Out == outRejected {
			continue
		}
		if o.Out == outUnknown && o.Kind.isWrite() && committed != nil && !committed[o.RequestID] {
			continue // never took effect
		}
		out := modelOutput{Known: o.Out != outUnknown, OK: o.Out == outOK, Code: o.Code, Value: o.Value, Status: o.Status}
		ret := o.Ret
		if !out.Known {
			if !o.Kind.isWrite() {
				continue // an unanswered read constrains nothing
			}
			ret = pendingForever
		}
		byTenant[o.Tenant] = append(byTenant[o.Tenant], porcupine.Operation{ClientId: o.Client,
			Input: modelInput{Kind: o.Kind, Value: o.Value, Client: o.Client}, Call: o.Call, Output: out, Return: ret})
	}
	return byTenant
}

// linResult is the linearizability verdict of one history.
type linResult struct {
	Checked    int      // operations checked
	Violations int      // tenants whose history is not linearizable
	Unknown    int      // tenants the checker could not decide in time
	Files      []string // visualizations of the failing tenants
	Details    []string
}

// checkLinearizable checks each tenant's history separately (a history is
// linearizable iff each object's is) and writes porcupine's visualization of
// every failing one.
func checkLinearizable(ops []op, committed map[string]bool, timeout time.Duration, name string) linResult {
	var r linResult
	byTenant := porcupineOps(ops, committed)
	tenants := make([]string, 0, len(byTenant))
	for t := range byTenant {
		tenants = append(tenants, t)
	}
	sort.Strings(tenants)
	for _, t := range tenants {
		h := byTenant[t]
		r.Checked += len(h)
		res, info := porcupine.CheckOperationsVerbose(tenantModel, h, timeout)
		switch res {
		case porcupine.Ok:
			continue
		case porcupine.Unknown:
			r.Unknown++
			r.Details = append(r.Details, fmt.Sprintf("tenant %s: undecided after %v (%d operations)", t, timeout, len(h)))
			continue
		}
		r.Violations++
		msg := fmt.Sprintf("tenant %s: NOT linearizable (%d operations)", t, len(h))
		dir := os.Getenv("FAULTS_LOG_DIR")
		if dir == "" {
			dir = os.TempDir()
		}
		p := filepath.Join(dir, fmt.Sprintf("%s-%s-%s.html", runID, sanitize(name), t))
		if err := porcupine.VisualizePath(tenantModel, info, p); err == nil {
			r.Files = append(r.Files, p)
			msg += "; visualization: " + p
		}
		r.Details = append(r.Details, msg)
	}
	return r
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			b[i] = '_'
		}
	}
	return string(b)
}

// checkMonotonicStale checks that stale reads never go back in time within a
// session: one client reading from one incarnation of one node (a restarted
// node rebuilds its state from its snapshot and log, so its first answers may
// be older than what it served before it died — a new session).
func checkMonotonicStale(ops []op) (reads, violations int, details []string) {
	type session struct {
		client int
		node   string
		inc    int64
	}
	last := map[session]op{}
	sorted := append([]op(nil), ops...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Call < sorted[j].Call })
	for _, o := range sorted {
		if o.Kind != opStaleRead || o.Out != outOK || o.Inc != o.IncAfter {
			continue
		}
		reads++
		s := session{o.Client, o.Node, o.Inc}
		if p, ok := last[s]; ok && o.Index < p.Index {
			violations++
			if len(details) < 10 {
				details = append(details, fmt.Sprintf("stale read went back from index %d to %d: %v then %v", p.Index, o.Index, p, o))
			}
		}
		last[s] = o
	}
	return reads, violations, details
}
