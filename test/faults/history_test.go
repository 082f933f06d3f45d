//go:build linux

package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// opKind is one kind of client operation.
type opKind uint8

const (
	opCreate     opKind = iota // POST /v1/tenants
	opDelete                   // DELETE /v1/tenants/{t}
	opSetRPM                   // PUT /v1/tenants/{t}/rate-limit
	opSuspend                  // POST /v1/tenants/{t}/suspend
	opActivate                 // POST /v1/tenants/{t}/activate
	opReadRPM                  // GET /v1/tenants/{t}/rate-limit?consistency=linearizable
	opReadStatus               // GET /v1/tenants/{t}?consistency=linearizable
	opStaleRead                // GET /v1/tenants/{t}/rate-limit?consistency=stale
	opCreateKey                // POST /v1/tenants/{t}/api-keys
	opRevokeKey                // DELETE /v1/tenants/{t}/api-keys/{id}
	opListKeys                 // GET /v1/tenants/{t}/api-keys?consistency=linearizable
	opAddRule                  // POST /v1/tenants/{t}/ip-rules
	opRemoveRule               // DELETE /v1/tenants/{t}/ip-rules/{id}
	opListRules                // GET /v1/tenants/{t}/ip-rules?consistency=linearizable
)

var opNames = [...]string{"create", "delete", "set-rpm", "suspend", "activate", "read-rpm", "read-status", "stale-read",
	"create-key", "revoke-key", "list-keys", "add-ip-rule", "remove-ip-rule", "list-ip-rules"}

func (k opKind) String() string { return opNames[k] }

func (k opKind) isWrite() bool {
	switch k {
	case opCreate, opDelete, opSetRPM, opSuspend, opActivate, opCreateKey, opRevokeKey, opAddRule, opRemoveRule:
		return true
	}
	return false
}

// onObject says whether the operation acts on an API key or IP rule (an
// object of its own, with a server-made id) rather than on the tenant.
func (k opKind) onObject() bool { return k >= opCreateKey }

// outcome classifies an operation's answer.
type outcome uint8

const (
	// outOK: a 2xx answer.
	outOK outcome = iota
	// outFail: a definite business answer (404 not_found, 409 conflict): the
	// command ran against the state and changed nothing, or the read saw no
	// such tenant.
	outFail
	// outRejected: definitely not applied — never sent (the dial failed), or
	// refused before proposing (400/401/403).
	outRejected
	// outUnknown: may or may not have happened — a timeout, a broken
	// connection, a 5xx (not_leader, unavailable).
	outUnknown
)

var outcomeNames = [...]string{"ok", "fail", "rejected", "unknown"}

func (o outcome) String() string { return outcomeNames[o] }

// op is one recorded operation: what was asked of which node, when, and what
// came back. Times are nanoseconds since the history's start.
type op struct {
	Client   int
	Node     string
	Inc      int64 // the node's incarnation when the call was made
	IncAfter int64 // … and when it returned
	Kind     opKind
	Tenant   string
	Value    int    // rpm written (set-rpm) or read (read-rpm, stale-read)
	Status   string // status read (read-status)
	// Object is the API key or IP rule acted on (revoke, remove), or created
	// (from the answer, or for an ambiguous create from the audit log).
	Object string
	// Seen is what a list read returned: object id → "active" or "revoked"
	// (keys), "present" (rules).
	Seen      map[string]string
	Call, Ret int64
	Out       outcome
	HTTP      int
	Code      string // error code of the JSON error body
	RequestID string
	Index     uint64 // X-Raft-Index of the answer
	Err       string
	Probe     bool // issued by the availability prober (not in the linearizability check)
}

func (o op) String() string {
	v := ""
	switch o.Kind {
	case opSetRPM, opReadRPM, opStaleRead:
		v = fmt.Sprintf(" rpm=%d", o.Value)
	case opReadStatus:
		v = " status=" + o.Status
	}
	return fmt.Sprintf("c%d %s %s@%s%s → %s %d %s idx=%d [%.3fs–%.3fs] rid=%s %s", o.Client, o.Kind, o.Tenant, o.Node, v,
		o.Out, o.HTTP, o.Code, o.Index, float64(o.Call)/1e9, float64(o.Ret)/1e9, o.RequestID, o.Err)
}

// history is the ordered record of every operation of one scenario.
type history struct {
	start time.Time
	mu    sync.Mutex
	ops   []op
}

func newHistory() *history { return &history{start: time.Now()} }

func (h *history) now() int64 { return int64(time.Since(h.start)) }

func (h *history) at(t time.Time) int64 { return int64(t.Sub(h.start)) }

func (h *history) add(o op) {
	h.mu.Lock()
	h.ops = append(h.ops, o)
	h.mu.Unlock()
}

func (h *history) snapshot() []op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]op(nil), h.ops...)
}

// apiClient issues admin operations against any node and records them.
type apiClient struct {
	id      int
	token   string
	http    *http.Client
	hist    *history
	prefix  string // request-id prefix: scenario and client
	seq     atomic.Uint64
	timeout time.Duration
}

func newAPIClient(id int, token, prefix string, hist *history, timeout time.Duration) *apiClient {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 500 * time.Millisecond}).DialContext,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}
	return &apiClient{id: id, token: token, hist: hist, prefix: fmt.Sprintf("%s-c%d", prefix, id), timeout: timeout,
		http: &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		}}}
}

func (a *apiClient) close() { a.http.CloseIdleConnections() }

type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// do performs one operation on node n and returns its record (it does not
// add it to the history: the caller does, so it can mark probes).
func (a *apiClient) do(n *node, kind opKind, tenant string, value int) op {
	return a.doObject(n, kind, tenant, value, "")
}

// doObject is do for operations on one API key or IP rule.
func (a *apiClient) doObject(n *node, kind opKind, tenant string, value int, object string) op {
	o := op{Client: a.id, Node: n.id, Kind: kind, Tenant: tenant, Value: value, Object: object,
		RequestID: fmt.Sprintf("%s-%d", a.prefix, a.seq.Add(1))}
	var method, path string
	var body any
	switch kind {
	case opCreate:
		method, path, body = http.MethodPost, "/v1/tenants", map[string]string{"id": tenant, "name": tenant, "tier": "free"}
	case opDelete:
		method, path = http.MethodDelete, "/v1/tenants/"+tenant
	case opSetRPM:
		method, path, body = http.MethodPut, "/v1/tenants/"+tenant+"/rate-limit",
			map[string]int{"requests_per_minute": value, "burst": value}
	case opSuspend:
		method, path = http.MethodPost, "/v1/tenants/"+tenant+"/suspend"
	case opActivate:
		method, path = http.MethodPost, "/v1/tenants/"+tenant+"/activate"
	case opReadRPM:
		method, path = http.MethodGet, "/v1/tenants/"+tenant+"/rate-limit?consistency=linearizable"
	case opReadStatus:
		method, path = http.MethodGet, "/v1/tenants/"+tenant+"?consistency=linearizable"
	case opStaleRead:
		method, path = http.MethodGet, "/v1/tenants/"+tenant+"/rate-limit?consistency=stale"
	case opCreateKey:
		method, path, body = http.MethodPost, "/v1/tenants/"+tenant+"/api-keys", map[string]string{"name": o.RequestID, "role": "readonly"}
	case opRevokeKey:
		method, path = http.MethodDelete, "/v1/tenants/"+tenant+"/api-keys/"+object
	case opListKeys:
		method, path = http.MethodGet, "/v1/tenants/"+tenant+"/api-keys?consistency=linearizable&limit=1000"
	case opAddRule:
		method, path, body = http.MethodPost, "/v1/tenants/"+tenant+"/ip-rules",
			map[string]string{"cidr": fmt.Sprintf("198.18.%d.%d/32", value/256%256, value%256), "action": "block", "note": o.RequestID}
	case opRemoveRule:
		method, path = http.MethodDelete, "/v1/tenants/"+tenant+"/ip-rules/"+object
	case opListRules:
		method, path = http.MethodGet, "/v1/tenants/"+tenant+"/ip-rules?consistency=linearizable"
	}
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, n.baseURL()+path, rd)
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("X-Request-ID", o.RequestID)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	o.Inc = n.incarnation.Load()
	o.Call = a.hist.now()
	resp, err := a.http.Do(req)
	var respBody []byte
	if err == nil {
		respBody, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	o.Ret = a.hist.now()
	o.IncAfter = n.incarnation.Load()
	if err != nil {
		o.Err = err.Error()
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "dial" {
			o.Out = outRejected // never reached the server
		} else {
			o.Out = outUnknown
		}
		if resp != nil {
			o.HTTP = resp.StatusCode
		}
		return o
	}
	o.HTTP = resp.StatusCode
	if ix := resp.Header.Get("X-Raft-Index"); ix != "" {
		fmt.Sscan(ix, &o.Index)
	}
	switch {
	case resp.StatusCode/100 == 2:
		o.Out = outOK
		switch kind {
		case opReadRPM, opStaleRead:
			var lim struct {
				RPM int `json:"requests_per_minute"`
			}
			if err := json.Unmarshal(respBody, &lim); err != nil {
				o.Out, o.Err = outUnknown, "undecodable answer: "+err.Error()
			}
			o.Value = lim.RPM
		case opReadStatus:
			var t struct {
				Status string `json:"status"`
			}
			if err := json.Unmarshal(respBody, &t); err != nil {
				o.Out, o.Err = outUnknown, "undecodable answer: "+err.Error()
			}
			o.Status = t.Status
		case opCreateKey, opAddRule:
			var obj struct {
				ID string `json:"id"`
			}
			if err := json.Unmarshal(respBody, &obj); err != nil || obj.ID == "" {
				o.Out, o.Err = outUnknown, fmt.Sprintf("undecodable answer: %v", err)
			}
			o.Object = obj.ID
		case opListKeys, opListRules:
			var list struct {
				Keys []struct {
					ID        string    `json:"id"`
					RevokedAt time.Time `json:"revoked_at"`
				} `json:"api_keys"`
				Rules []struct {
					ID string `json:"id"`
				} `json:"ip_rules"`
				Next string `json:"next_cursor"`
			}
			if err := json.Unmarshal(respBody, &list); err != nil || list.Next != "" {
				o.Out, o.Err = outUnknown, fmt.Sprintf("undecodable or partial answer: %v", err)
			}
			o.Seen = map[string]string{}
			for _, k := range list.Keys {
				o.Seen[k.ID] = map[bool]string{true: "active", false: "revoked"}[k.RevokedAt.IsZero()]
			}
			for _, r := range list.Rules {
				o.Seen[r.ID] = "present"
			}
		}
	default:
		var eb errorBody
		_ = json.Unmarshal(respBody, &eb)
		o.Code = eb.Error.Code
		o.Err = strings.TrimSpace(eb.Error.Message)
		switch {
		case resp.StatusCode == http.StatusNotFound && o.Code == "not_found",
			resp.StatusCode == http.StatusConflict && o.Code == "conflict",
			resp.StatusCode == http.StatusPreconditionFailed && o.Code == "failed_precondition":
			o.Out = outFail
		case resp.StatusCode/100 == 4:
			o.Out = outRejected
		default:
			o.Out = outUnknown
		}
	}
	return o
}
