package api_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// badCase is one refused request: the answer is a 4xx with the JSON error
// shape and the expected code, and nothing changes.
type badCase struct {
	name   string
	method string
	path   string
	body   string
	auth   string // "" for the operator token, "none" for no credential, else the Authorization value
	hdr    map[string]string
	status int
	code   string
}

const (
	badToken  = "not-a-real-token-SECRET-7f3a9c"
	badAPIKey = "ask_SECRETKEY-0123456789abcdef"
)

func invalidArg(name, method, path, body string) badCase {
	return badCase{name: name, method: method, path: path, body: body, status: http.StatusBadRequest, code: "invalid_argument"}
}

// badTenantPathIDs are tenant ids, as they appear escaped in a URL path, that
// the API must refuse.
var badTenantPathIDs = map[string]string{
	"65 characters":           strings.Repeat("a", 65),
	"dot dot slash, escaped":  "%2e%2e%2fx",
	"dot dot, escaped":        "%2e%2e",
	"slash, escaped":          "a%2Fb",
	"unicode":                 "t%C3%A9nant",
	"uppercase":               "ACME",
	"space":                   "a%20b",
	"NUL":                     "a%00b",
	"dot":                     "a.b",
	"fullwidth a":             "%EF%BD%81",
	"trailing newline":        "acme%0A",
	"backslash dot dot":       "..%5Cx",
	"percent encoded percent": "a%252e",
}

var badTenantBodyIDs = map[string]string{
	"empty":         `""`,
	"65 characters": `"` + strings.Repeat("a", 65) + `"`,
	"dot dot slash": `"../x"`,
	"unicode":       `"ténant"`,
	"uppercase":     `"ACME"`,
	"space":         `"a b"`,
	"NUL":           `"a\u0000b"`,
	"slash":         `"a/b"`,
	"newline":       `"acme\n"`,
}

func badCases() []badCase {
	cs := []badCase{
		// Bodies that are not the JSON the endpoint takes.
		invalidArg("malformed JSON", "POST", "/v1/tenants", `{"id":`),
		invalidArg("missing colon", "POST", "/v1/tenants", `{"id" "acme2"}`),
		invalidArg("form encoding", "POST", "/v1/tenants", `id=acme2`),
		invalidArg("unknown field", "POST", "/v1/tenants", `{"id":"acme2","evil":true}`),
		invalidArg("unknown nested field", "POST", "/v1/tenants", `{"id":"acme2","quotas":{"max_users":1,"x":2}}`),
		invalidArg("field case folding is not a loophole", "POST", "/v1/tenants", `{"ID":"acme2","Evil":1}`),
		invalidArg("trailing object", "POST", "/v1/tenants", `{"id":"acme2"}{"id":"acme3"}`),
		invalidArg("trailing garbage", "POST", "/v1/tenants", `{"id":"acme2"} x`),
		invalidArg("trailing comma", "POST", "/v1/tenants", `{"id":"acme2"},`),
		invalidArg("id of the wrong type", "POST", "/v1/tenants", `{"id":5}`),
		invalidArg("quotas of the wrong type", "POST", "/v1/tenants", `{"id":"acme2","quotas":"lots"}`),
		invalidArg("quota as a string", "POST", "/v1/tenants", `{"id":"acme2","quotas":{"max_users":"1"}}`),
		invalidArg("fractional quota", "POST", "/v1/tenants", `{"id":"acme2","quotas":{"max_users":1.5}}`),
		invalidArg("quota overflow", "POST", "/v1/tenants", `{"id":"acme2","quotas":{"max_users":99999999999999999999}}`),
		invalidArg("array body", "POST", "/v1/tenants", `[]`),
		invalidArg("string body", "POST", "/v1/tenants", `"acme2"`),
		invalidArg("null body", "POST", "/v1/tenants", `null`),
		invalidArg("empty body", "POST", "/v1/tenants", ``),
		invalidArg("whitespace body", "POST", "/v1/tenants", " \n\t"),
		invalidArg("unknown tier", "POST", "/v1/tenants", `{"id":"acme2","tier":"gold"}`),
		invalidArg("negative quota", "POST", "/v1/tenants", `{"id":"acme2","quotas":{"max_api_keys":-1}}`),
		invalidArg("control character in name", "POST", "/v1/tenants", `{"id":"acme2","name":"a\u0001b"}`),
		{name: "oversized body", method: "POST", path: "/v1/tenants", body: `{"id":"acme2","name":"` + strings.Repeat("a", 70<<10) + `"}`,
			status: http.StatusRequestEntityTooLarge, code: "payload_too_large"},
		{name: "oversized body of valid JSON and padding", method: "POST", path: "/v1/tenants", body: `{"id":"acme2"}` + strings.Repeat(" ", 70<<10),
			status: http.StatusRequestEntityTooLarge, code: "payload_too_large"},
		{name: "oversized rate-limit body", method: "PUT", path: "/v1/tenants/acme/rate-limit", body: `{"tier":"` + strings.Repeat("f", 70<<10) + `"}`,
			status: http.StatusRequestEntityTooLarge, code: "payload_too_large"},

		invalidArg("update: malformed", "PATCH", "/v1/tenants/acme", `{`),
		invalidArg("update: id is not a field", "PATCH", "/v1/tenants/acme", `{"id":"globex"}`),
		invalidArg("update: name of the wrong type", "PATCH", "/v1/tenants/acme", `{"name":5}`),
		invalidArg("update: empty body", "PATCH", "/v1/tenants/acme", ``),
		invalidArg("rate limit: unknown tier", "PUT", "/v1/tenants/acme/rate-limit", `{"tier":"gold"}`),
		invalidArg("rate limit: tier and figures", "PUT", "/v1/tenants/acme/rate-limit", `{"tier":"free","requests_per_minute":5}`),
		invalidArg("rate limit: negative", "PUT", "/v1/tenants/acme/rate-limit", `{"requests_per_minute":-1}`),
		invalidArg("rate limit: nothing", "PUT", "/v1/tenants/acme/rate-limit", `{}`),
		invalidArg("rate limit: string figure", "PUT", "/v1/tenants/acme/rate-limit", `{"requests_per_minute":"10"}`),
		invalidArg("rate limit: unknown field", "PUT", "/v1/tenants/acme/rate-limit", `{"requests_per_minute":10,"reason":"x"}`),
		invalidArg("rate limit: route cost above burst", "PUT", "/v1/tenants/acme/rate-limit", `{"requests_per_minute":10,"burst":5,"route_costs":{"login":6}}`),
		invalidArg("retention: neither", "POST", "/v1/audit/retention", `{}`),
		invalidArg("retention: both", "POST", "/v1/audit/retention", `{"before":"2026-01-01T00:00:00Z","older_than":"1h"}`),
		invalidArg("retention: bad time", "POST", "/v1/audit/retention", `{"before":"yesterday"}`),
		invalidArg("retention: negative duration", "POST", "/v1/audit/retention", `{"older_than":"-5h"}`),
		invalidArg("retention: malformed", "POST", "/v1/audit/retention", `{"older_than":`),
		invalidArg("leadership transfer: id of the wrong type", "POST", "/v1/cluster/leadership-transfer", `{"id":5}`),
		invalidArg("remove member: bad id", "DELETE", "/v1/cluster/members/BAD", ``),
		invalidArg("remove member: dot dot", "DELETE", "/v1/cluster/members/%2e%2e", ``),
		invalidArg("snapshot restore: not a snapshot", "PUT", "/v1/cluster/snapshot", `not a snapshot`),
		invalidArg("snapshot restore: empty", "PUT", "/v1/cluster/snapshot", ``),
		invalidArg("snapshot restore: bad magic", "PUT", "/v1/cluster/snapshot", "ASGSNAP\x02E"),

		// Join: the join token, then the body.
		{name: "join: no token", method: "POST", path: "/v1/cluster/join", body: `{"node_id":"n2","raft_addr":"127.0.0.1:1","http_addr":"127.0.0.1:2"}`,
			auth: "none", status: http.StatusUnauthorized, code: "unauthenticated"},
		{name: "join: wrong token", method: "POST", path: "/v1/cluster/join", body: `{"node_id":"n2","raft_addr":"127.0.0.1:1","http_addr":"127.0.0.1:2"}`,
			auth: "none", hdr: map[string]string{"X-Allsource-Join-Token": badToken}, status: http.StatusUnauthorized, code: "unauthenticated"},
		{name: "join: malformed", method: "POST", path: "/v1/cluster/join", body: `{"node_id":`, auth: "none",
			hdr: map[string]string{"X-Allsource-Join-Token": joinToken}, status: http.StatusBadRequest, code: "invalid_argument"},
		{name: "join: bad node id", method: "POST", path: "/v1/cluster/join", body: `{"node_id":"../x","raft_addr":"127.0.0.1:1","http_addr":"127.0.0.1:2"}`,
			auth: "none", hdr: map[string]string{"X-Allsource-Join-Token": joinToken}, status: http.StatusBadRequest, code: "invalid_argument"},
		{name: "join: bad raft address", method: "POST", path: "/v1/cluster/join", body: `{"node_id":"n2","raft_addr":"nohost","http_addr":"127.0.0.1:2"}`,
			auth: "none", hdr: map[string]string{"X-Allsource-Join-Token": joinToken}, status: http.StatusBadRequest, code: "invalid_argument"},

		// Query parameters.
		invalidArg("consistency: unknown", "GET", "/v1/tenants?consistency=strong", ``),
		invalidArg("consistency: case", "GET", "/v1/tenants?consistency=STALE", ``),
		invalidArg("consistency: on a tenant", "GET", "/v1/tenants/acme?consistency=bogus", ``),
		{name: "consistency: refused before authentication", method: "GET", path: "/v1/tenants?consistency=x", auth: "none",
			status: http.StatusBadRequest, code: "invalid_argument"},
		invalidArg("tenants: limit 0", "GET", "/v1/tenants?limit=0", ``),
		invalidArg("tenants: negative limit", "GET", "/v1/tenants?limit=-1", ``),
		invalidArg("tenants: limit too high", "GET", "/v1/tenants?limit=1001", ``),
		invalidArg("tenants: limit not a number", "GET", "/v1/tenants?limit=abc", ``),
		invalidArg("tenants: limit in exponent form", "GET", "/v1/tenants?limit=1e3", ``),
		invalidArg("tenants: fractional limit", "GET", "/v1/tenants?limit=10.5", ``),
		invalidArg("tenants: cursor not a tenant id", "GET", "/v1/tenants?cursor=..%2Fx", ``),
		invalidArg("tenants: uppercase cursor", "GET", "/v1/tenants?cursor=ACME", ``),
		invalidArg("audit: limit 0", "GET", "/v1/tenants/acme/audit?limit=0", ``),
		invalidArg("audit: limit too high", "GET", "/v1/tenants/acme/audit?limit=100000", ``),
		invalidArg("audit: cursor not a number", "GET", "/v1/tenants/acme/audit?cursor=abc", ``),
		invalidArg("audit: negative cursor", "GET", "/v1/tenants/acme/audit?cursor=-1", ``),
		invalidArg("audit: fractional cursor", "GET", "/v1/tenants/acme/audit?cursor=1.5", ``),
		invalidArg("audit: cursor overflow", "GET", "/v1/tenants/acme/audit?cursor=99999999999999999999999", ``),
		invalidArg("audit: bad since", "GET", "/v1/tenants/acme/audit?since=yesterday", ``),
		invalidArg("audit: bad until", "GET", "/v1/tenants/acme/audit?until=2026-13-01T00:00:00Z", ``),

		// Paths that are not endpoints, or not in canonical form.
		{name: "unknown endpoint", method: "GET", path: "/v1/nope", status: http.StatusNotFound, code: "not_found"},
		{name: "unknown endpoint, POST", method: "POST", path: "/nope", body: `{}`, status: http.StatusNotFound, code: "not_found"},
		{name: "unknown endpoint, no credential", method: "GET", path: "/v1/nope", auth: "none", status: http.StatusNotFound, code: "not_found"},
		{name: "unknown sub-resource", method: "GET", path: "/v1/tenants/acme/nope", status: http.StatusNotFound, code: "not_found"},
		{name: "unknown version", method: "GET", path: "/v2/tenants", status: http.StatusNotFound, code: "not_found"},
		{name: "empty tenant id", method: "GET", path: "/v1/tenants/", status: http.StatusNotFound, code: "not_found"},
		{name: "empty tenant id, DELETE", method: "DELETE", path: "/v1/tenants/", status: http.StatusNotFound, code: "not_found"},
		{name: "trailing slash", method: "GET", path: "/v1/tenants/acme/", status: http.StatusNotFound, code: "not_found"},
		{name: "missing tenant", method: "GET", path: "/v1/tenants/nope", status: http.StatusNotFound, code: "not_found"},
		{name: "missing tenant's rate limit", method: "GET", path: "/v1/tenants/nope/rate-limit", status: http.StatusNotFound, code: "not_found"},
		invalidArg("dot dot in the path", "GET", "/v1/tenants/../x", ``),
		invalidArg("dot dot to another endpoint", "DELETE", "/v1/tenants/../tenants/acme", ``),
		invalidArg("dot segment", "GET", "/v1/tenants/./acme", ``),
		invalidArg("double slash", "GET", "//v1/tenants", ``),
		invalidArg("empty segment", "POST", "/v1/tenants//suspend", ``),

		// Methods a path has no route for.
		{name: "DELETE the tenant list", method: "DELETE", path: "/v1/tenants", status: http.StatusMethodNotAllowed, code: "method_not_allowed"},
		{name: "PUT health", method: "PUT", path: "/health", body: `{}`, status: http.StatusMethodNotAllowed, code: "method_not_allowed"},
		{name: "POST audit verify", method: "POST", path: "/v1/audit/verify", status: http.StatusMethodNotAllowed, code: "method_not_allowed"},
		{name: "GET join", method: "GET", path: "/v1/cluster/join", status: http.StatusMethodNotAllowed, code: "method_not_allowed"},
		{name: "POST a tenant", method: "POST", path: "/v1/tenants/acme", body: `{}`, status: http.StatusMethodNotAllowed, code: "method_not_allowed"},
		{name: "GET suspend", method: "GET", path: "/v1/tenants/acme/suspend", status: http.StatusMethodNotAllowed, code: "method_not_allowed"},
		{name: "wrong method, no credential", method: "DELETE", path: "/v1/tenants", auth: "none", status: http.StatusMethodNotAllowed, code: "method_not_allowed"},

		// Credentials.
		{name: "create without a credential", method: "POST", path: "/v1/tenants", body: `{"id":"acme2"}`, auth: "none",
			status: http.StatusUnauthorized, code: "unauthenticated"},
		{name: "list without a credential", method: "GET", path: "/v1/tenants", auth: "none", status: http.StatusUnauthorized, code: "unauthenticated"},
		{name: "audit without a credential", method: "GET", path: "/v1/tenants/acme/audit", auth: "none", status: http.StatusUnauthorized, code: "unauthenticated"},
		{name: "snapshot without a credential", method: "GET", path: "/v1/cluster/snapshot", auth: "none", status: http.StatusUnauthorized, code: "unauthenticated"},
		{name: "invalid bearer token", method: "POST", path: "/v1/tenants", body: `{"id":"acme2"}`, auth: "Bearer " + badToken,
			status: http.StatusUnauthorized, code: "unauthenticated"},
		{name: "invalid bearer on a read", method: "GET", path: "/v1/tenants/acme", auth: "Bearer " + badToken,
			status: http.StatusUnauthorized, code: "unauthenticated"},
		{name: "basic scheme", method: "GET", path: "/v1/tenants", auth: "Basic " + badToken, status: http.StatusUnauthorized, code: "unauthenticated"},
		{name: "bearer without a token", method: "GET", path: "/v1/tenants", auth: "Bearer", status: http.StatusUnauthorized, code: "unauthenticated"},
		{name: "unknown API key", method: "GET", path: "/v1/tenants", auth: "none", hdr: map[string]string{"X-API-Key": badAPIKey},
			status: http.StatusUnauthorized, code: "unauthenticated"},
		{name: "join token is not an API credential", method: "POST", path: "/v1/tenants", body: `{"id":"acme2"}`, auth: "Bearer " + joinToken,
			status: http.StatusUnauthorized, code: "unauthenticated"},
		{name: "forged forwarding headers", method: "POST", path: "/v1/tenants", body: `{"id":"acme2"}`, auth: "none",
			hdr:    map[string]string{"X-Allsource-Forward-Token": badToken, "X-Allsource-Forwarded-By": "n9"},
			status: http.StatusUnauthorized, code: "unauthenticated"},
		{name: "credential in the body is not a credential", method: "POST", path: "/v1/tenants", auth: "none",
			body: `{"id":"acme2","token":"` + badToken + `"}`, status: http.StatusUnauthorized, code: "unauthenticated"},
	}
	for name, id := range badTenantBodyIDs {
		cs = append(cs, invalidArg("tenant id in body: "+name, "POST", "/v1/tenants", `{"id":`+id+`}`))
	}
	for name, id := range badTenantPathIDs {
		for _, ep := range []struct{ method, path, body string }{
			{"GET", "/v1/tenants/%s", ""},
			{"PATCH", "/v1/tenants/%s", `{"name":"x"}`},
			{"DELETE", "/v1/tenants/%s", ""},
			{"POST", "/v1/tenants/%s/suspend", ""},
			{"POST", "/v1/tenants/%s/activate", ""},
			{"GET", "/v1/tenants/%s/rate-limit", ""},
			{"PUT", "/v1/tenants/%s/rate-limit", `{"tier":"free"}`},
			{"GET", "/v1/tenants/%s/audit", ""},
		} {
			cs = append(cs, invalidArg(fmt.Sprintf("tenant id in path: %s: %s %s", name, ep.method, ep.path), ep.method,
				fmt.Sprintf(ep.path, id), ep.body))
		}
	}
	return cs
}

// runBadCases runs cases against ts: every one is refused with its code and
// leaves the raft log and the state as they were.
func runBadCases(t *testing.T, ts *testServer, cases []badCase) {
	t.Helper()
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hdr := map[string]string{"X-Request-ID": fmt.Sprintf("bad-case-%d", i)}
			switch c.auth {
			case "":
				if ts.token != "" {
					hdr["Authorization"] = "Bearer " + ts.token
				}
			case "none":
			default:
				hdr["Authorization"] = c.auth
			}
			for k, v := range c.hdr {
				hdr[k] = v
			}
			before := ts.state()
			resp, body := ts.do(c.method, c.path, c.body, hdr)
			e := checkError(t, c.method+" "+c.path, resp, body, c.status, c.code, ts.token, badToken, badAPIKey, joinToken)
			if e.Error.RequestID != hdr["X-Request-ID"] {
				t.Errorf("request_id %q, want the caller's %q", e.Error.RequestID, hdr["X-Request-ID"])
			}
			if c.status == http.StatusMethodNotAllowed && resp.Header.Get("Allow") == "" {
				t.Errorf("405 without an Allow header")
			}
			ts.unchanged(before, c.name)
		})
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	ts := startServer(t, false)
	ts.mustOK("POST", "/v1/tenants", `{"id":"acme","name":"Acme","tier":"professional"}`, http.StatusCreated)
	runBadCases(t, ts, badCases())

	// After all that, the API still works and holds just what was created.
	b := ts.mustOK("GET", "/v1/tenants", "", http.StatusOK)
	if !strings.Contains(string(b), `"id":"acme"`) || strings.Count(string(b), `"id":`) != 1 {
		t.Fatalf("tenant list after the bad requests: %s; want only acme", b)
	}
}

// TestBusinessErrorsThroughRaft: errors Apply decides travel back with their
// code; the refused command changes no tenant.
func TestBusinessErrorsThroughRaft(t *testing.T) {
	ts := startServer(t, false)
	ts.mustOK("POST", "/v1/tenants", `{"id":"acme"}`, http.StatusCreated)
	for _, c := range []badCase{
		{name: "duplicate", method: "POST", path: "/v1/tenants", body: `{"id":"acme"}`, status: http.StatusConflict, code: "conflict"},
		{name: "update missing", method: "PATCH", path: "/v1/tenants/nope", body: `{"name":"x"}`, status: http.StatusNotFound, code: "not_found"},
		{name: "delete missing", method: "DELETE", path: "/v1/tenants/nope", status: http.StatusNotFound, code: "not_found"},
		{name: "suspend missing", method: "POST", path: "/v1/tenants/nope/suspend", status: http.StatusNotFound, code: "not_found"},
		{name: "rate limit of missing", method: "PUT", path: "/v1/tenants/nope/rate-limit", body: `{"tier":"free"}`, status: http.StatusNotFound, code: "not_found"},
		{name: "update with unknown tier", method: "PATCH", path: "/v1/tenants/acme", body: `{"tier":"gold"}`, status: http.StatusBadRequest, code: "invalid_argument"},
		{name: "update with empty name", method: "PATCH", path: "/v1/tenants/acme", body: `{"name":""}`, status: http.StatusBadRequest, code: "invalid_argument"},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := ts.state()
			resp, body := ts.do(c.method, c.path, c.body, ts.op())
			checkError(t, c.name, resp, body, c.status, c.code, ts.token)
			if after := ts.state(); after.tenants != before.tenants {
				t.Errorf("tenant list changed:\n%s\n%s", before.tenants, after.tenants)
			}
		})
	}
}

// TestNonOperator: dev mode's synthetic tenant admin is not the operator.
func TestNonOperator(t *testing.T) {
	ts := startServer(t, true)
	runBadCases(t, ts, []badCase{
		{name: "create a tenant", method: "POST", path: "/v1/tenants", body: `{"id":"t1"}`, auth: "none", status: http.StatusForbidden, code: "forbidden"},
		{name: "create an invalid tenant", method: "POST", path: "/v1/tenants", body: `{"id":"../x"}`, auth: "none", status: http.StatusForbidden, code: "forbidden"},
		{name: "set own rate limit", method: "PUT", path: "/v1/tenants/dev-tenant/rate-limit", body: `{"tier":"free"}`, auth: "none", status: http.StatusForbidden, code: "forbidden"},
		{name: "change own tier", method: "PATCH", path: "/v1/tenants/dev-tenant", body: `{"tier":"free"}`, auth: "none", status: http.StatusForbidden, code: "forbidden"},
		{name: "delete own tenant", method: "DELETE", path: "/v1/tenants/dev-tenant", auth: "none", status: http.StatusForbidden, code: "forbidden"},
		{name: "suspend own tenant", method: "POST", path: "/v1/tenants/dev-tenant/suspend", auth: "none", status: http.StatusForbidden, code: "forbidden"},
		{name: "audit retention", method: "POST", path: "/v1/audit/retention", body: `{"older_than":"1h"}`, auth: "none", status: http.StatusForbidden, code: "forbidden"},
		{name: "cluster members", method: "GET", path: "/v1/cluster/members", auth: "none", status: http.StatusForbidden, code: "forbidden"},
		{name: "snapshot download", method: "GET", path: "/v1/cluster/snapshot", auth: "none", status: http.StatusForbidden, code: "forbidden"},
		{name: "snapshot restore", method: "PUT", path: "/v1/cluster/snapshot", body: "x", auth: "none", status: http.StatusForbidden, code: "forbidden"},
		{name: "leadership transfer", method: "POST", path: "/v1/cluster/leadership-transfer", auth: "none", status: http.StatusForbidden, code: "forbidden"},
		{name: "remove a member", method: "DELETE", path: "/v1/cluster/members/n1", auth: "none", status: http.StatusForbidden, code: "forbidden"},
		{name: "read another tenant", method: "GET", path: "/v1/tenants/other", auth: "none", status: http.StatusNotFound, code: "not_found"},
		{name: "rename another tenant", method: "PATCH", path: "/v1/tenants/other", body: `{"name":"x"}`, auth: "none", status: http.StatusNotFound, code: "not_found"},
		{name: "another tenant's audit", method: "GET", path: "/v1/tenants/other/audit", auth: "none", status: http.StatusNotFound, code: "not_found"},
		{name: "another tenant's rate limit", method: "GET", path: "/v1/tenants/other/rate-limit", auth: "none", status: http.StatusNotFound, code: "not_found"},
		{name: "an invalid credential in dev mode", method: "GET", path: "/v1/tenants", auth: "Bearer " + badToken, status: http.StatusUnauthorized, code: "unauthenticated"},
	})
	// The dev principal does see its own tenant.
	resp, body := ts.do("GET", "/v1/tenants/dev-tenant", "", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("dev principal reading dev-tenant: %d %s", resp.StatusCode, body)
	}
}

func TestMethodNotAllowedListsMethods(t *testing.T) {
	ts := startServer(t, false)
	for path, want := range map[string]string{
		"/v1/tenants":                 "GET, HEAD, POST",
		"/health":                     "GET, HEAD",
		"/v1/tenants/acme":            "GET, HEAD, PATCH, DELETE",
		"/v1/tenants/acme/rate-limit": "GET, HEAD, PUT",
		"/v1/cluster/snapshot":        "GET, HEAD, PUT",
		"/v1/cluster/join":            "POST",
	} {
		resp, body := ts.do("OPTIONS", path, "", ts.op())
		checkError(t, "OPTIONS "+path, resp, body, http.StatusMethodNotAllowed, "method_not_allowed", ts.token)
		if got := resp.Header.Get("Allow"); got != want {
			t.Errorf("OPTIONS %s: Allow %q, want %q", path, got, want)
		}
	}
}

// TestRateLimitByTierAndFigures: the accepted forms of PUT rate-limit work end
// to end (the API validates before proposing and Apply validates again).
func TestRateLimitByTierAndFigures(t *testing.T) {
	ts := startServer(t, false)
	ts.mustOK("POST", "/v1/tenants", `{"id":"acme"}`, http.StatusCreated)
	for body, want := range map[string]string{
		`{"tier":"professional"}`:                          `"requests_per_minute":600,"burst":1000`,
		`{"requests_per_minute":120,"burst":10}`:           `"requests_per_minute":120,"burst":10`,
		`{"tier":"free","route_costs":{"login":5}}`:        `"requests_per_minute":60,"burst":100,"route_costs":{"login":5}`,
		`{"requests_per_minute":30}`:                       `"requests_per_minute":30,"burst":30`,
		`{"tier":"dev","min_requests_per_minute":10}`:      `"requests_per_minute":100000,"burst":200000`,
		`{"tier":"unlimited","max_requests_per_minute":0}`: `"requests_per_minute":10000,"burst":20000`,
	} {
		b := ts.mustOK("PUT", "/v1/tenants/acme/rate-limit", body, http.StatusOK)
		if !strings.Contains(string(b), want) {
			t.Errorf("PUT rate-limit %s: %s; want it to contain %s", body, b, want)
		}
		if got := ts.mustOK("GET", "/v1/tenants/acme/rate-limit", "", http.StatusOK); !strings.Contains(string(got), want) {
			t.Errorf("GET rate-limit after %s: %s; want it to contain %s", body, got, want)
		}
	}
}
