//go:build linux

package faults

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
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
	Object string
}

type modelOutput struct {
	Known  bool // false: the write's outcome is unknown
	OK     bool // 2xx; otherwise Code says which business error
	Code   string
	Value  int
	Status string
	Seen   string // list reads, per object: "active", "revoked", "present" or "absent"
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

// API keys and IP rules are objects of their own (one partition each): they
// live on tenants that nothing else touches, so their history is independent
// of the tenant model. A list read of a tenant's keys or rules is checked as
// one read of every object of that tenant at the same interval — each
// object's view must be linearizable (the list being one atomic snapshot
// across objects is not checked):
//
//	create-key, add-ip-rule → ok and present if absent (ids are new, so never present)
//	revoke-key → ok and revoked if active; failed_precondition if revoked; not_found if absent
//	remove-ip-rule → ok and absent if present; not_found if absent
//	list → "active"/"revoked" (keys), "present" (rules) or "absent"
type objectState struct {
	Present, Revoked bool
}

func (s objectState) seen(rule bool) string {
	switch {
	case !s.Present:
		return "absent"
	case rule:
		return "present"
	case s.Revoked:
		return "revoked"
	}
	return "active"
}

func objectStep(state, input, output any) (bool, any) {
	s := state.(objectState)
	in := input.(modelInput)
	out := output.(modelOutput)
	next, ok, code := s, false, "not_found"
	switch in.Kind {
	case opListKeys, opListRules:
		return out.Seen == s.seen(in.Kind == opListRules), s
	case opCreateKey, opAddRule:
		ok, code = !s.Present, "conflict"
		next = objectState{Present: true}
	case opRevokeKey:
		ok = s.Present && !s.Revoked
		if s.Present && s.Revoked {
			code = "failed_precondition"
		}
		next.Revoked = true
	case opRemoveRule:
		ok = s.Present
		next = objectState{}
	}
	if !ok {
		next = s
	}
	if !out.Known {
		return true, next
	}
	if out.OK != ok || !ok && out.Code != code {
		return false, s
	}
	return true, next
}

var objectModel = porcupine.Model{
	Init: func() any { return objectState{} },
	Step: objectStep,
	DescribeOperation: func(input, output any) string {
		in, out := input.(modelInput), output.(modelOutput)
		res := "ok"
		switch {
		case !out.Known:
			res = "unknown"
		case in.Kind == opListKeys || in.Kind == opListRules:
			res = out.Seen
		case !out.OK:
			res = out.Code
		}
		return fmt.Sprintf("c%d %s(%s) → %s", in.Client, in.Kind, in.Object, res)
	},
	DescribeState: func(state any) string { return fmt.Sprintf("%+v", state.(objectState)) },
}

// pendingForever is the return time of an operation whose outcome is unknown.
const pendingForever = int64(math.MaxInt64 / 2)

// porcupineOps turns the non-probe operations into porcupine's form, one
// history per tenant ("tenant:…") and per API key or IP rule ("key:…",
// "rule:…"). resolved, when known, maps the request id of every ambiguous
// write that took effect to the object it created, if any (nil: keep every
// ambiguous write pending).
func porcupineOps(ops []op, resolved map[string]string) map[string][]porcupine.Operation {
	byTenant := map[string][]porcupine.Operation{}
	// The objects of each tenant, for splitting list reads.
	objects := map[string]map[string]bool{} // "key:"+tenant or "rule:"+tenant → ids
	family := func(k opKind) string {
		switch k {
		case opCreateKey, opRevokeKey, opListKeys:
			return "key:"
		}
		return "rule:"
	}
	note := func(fam, tenant, id string) {
		if id == "" {
			return
		}
		if objects[fam+tenant] == nil {
			objects[fam+tenant] = map[string]bool{}
		}
		objects[fam+tenant][id] = true
	}
	for i, o := range ops {
		if !o.Kind.onObject() {
			continue
		}
		if o.Out == outUnknown && (o.Kind == opCreateKey || o.Kind == opAddRule) && resolved != nil {
			ops[i].Object = resolved[o.RequestID]
			o = ops[i]
		}
		note(family(o.Kind), o.Tenant, o.Object)
		for id := range o.Seen {
			note(family(o.Kind), o.Tenant, id)
		}
	}
	for _, o := range ops {
		if o.Probe || o.Kind == opStaleRead || o.Out == outRejected {
			continue
		}
		if o.Out == outUnknown && o.Kind.isWrite() && resolved != nil {
			if _, ok := resolved[o.RequestID]; !ok {
				continue // never took effect
			}
		}
		if o.Kind.onObject() {
			fam := family(o.Kind)
			in := modelInput{Kind: o.Kind, Client: o.Client, Object: o.Object}
			out := modelOutput{Known: o.Out != outUnknown, OK: o.Out == outOK, Code: o.Code}
			ret := o.Ret
			if !out.Known {
				if !o.Kind.isWrite() {
					continue
				}
				ret = pendingForever
			}
			switch o.Kind {
			case opListKeys, opListRules:
				for id := range objects[fam+o.Tenant] {
					seen, ok := o.Seen[id]
					if !ok {
						seen = "absent"
					}
					in.Object, out.Seen = id, seen
					byTenant[fam+o.Tenant+"/"+id] = append(byTenant[fam+o.Tenant+"/"+id], porcupine.Operation{
						ClientId: o.Client, Input: in, Call: o.Call, Output: out, Return: ret})
				}
			default:
				if o.Object == "" {
					continue // a create that failed, or never took effect: no object
				}
				byTenant[fam+o.Tenant+"/"+o.Object] = append(byTenant[fam+o.Tenant+"/"+o.Object], porcupine.Operation{
					ClientId: o.Client, Input: in, Call: o.Call, Output: out, Return: ret})
			}
			continue
		}
		out := modelOutput{Known: o.Out != outUnknown, OK: o.Out == outOK, Code: o.Code, Value: o.Value, Status: o.Status}
		ret := o.Ret
		if !out.Known {
			if !o.Kind.isWrite() {
				continue // an unanswered read constrains nothing
			}
			ret = pendingForever
		}
		byTenant["tenant:"+o.Tenant] = append(byTenant["tenant:"+o.Tenant], porcupine.Operation{ClientId: o.Client,
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
func checkLinearizable(ops []op, resolved map[string]string, timeout time.Duration, name string) linResult {
	var r linResult
	byTenant := porcupineOps(append([]op(nil), ops...), resolved)
	tenants := make([]string, 0, len(byTenant))
	for t := range byTenant {
		tenants = append(tenants, t)
	}
	sort.Strings(tenants)
	for _, t := range tenants {
		h := byTenant[t]
		r.Checked += len(h)
		model := tenantModel
		if !strings.HasPrefix(t, "tenant:") {
			model = objectModel
		}
		res, info := porcupine.CheckOperationsVerbose(model, h, timeout)
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
		p := filepath.Join(dir, fmt.Sprintf("%s-%s-%s.html", runID, sanitize(name), sanitize(t)))
		if err := porcupine.VisualizePath(model, info, p); err == nil {
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
