package test

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/fsm"
	"github.com/allsource/guard/internal/server"
)

// threatServer starts one in-process server with identity on fast (test)
// Argon2 parameters and returns it with its operator token.
func threatServer(t *testing.T, mut func(*server.Config)) (*inprocCluster, *inprocNode, string) {
	t.Helper()
	c := newInprocCluster(t)
	n := c.add("s1")
	n.cfg.Identity.ArgonMemoryKiB, n.cfg.Identity.ArgonTime, n.cfg.Identity.AllowWeakArgon = 64, 1, true
	if mut != nil {
		mut(&n.cfg)
	}
	c.start(n)
	return c, n, operatorToken(t, n)
}

// mustEventually repeats a request until it answers want (the server may
// still be loading its key material: 503).
func mustEventually(t *testing.T, api *apiClient, want int, method, addr, path, tok string, body any) *resp {
	t.Helper()
	var last *resp
	threatWait(t, 20*time.Second, method+" "+path+" → "+strconv.Itoa(want), func() bool {
		r, err := api.call(method, addr, path, tok, body)
		if err == nil {
			last = r
		}
		return err == nil && r.Status == want
	})
	return last
}

type loginAnswer struct {
	AccessToken string `json:"access_token"`
	Error       struct {
		Code string `json:"code"`
	} `json:"error"`
}

// login logs in, waiting out 503s (the signing keys still loading).
func login(t *testing.T, api *apiClient, addr string, body map[string]string) (int, loginAnswer) {
	t.Helper()
	var r *resp
	threatWait(t, 20*time.Second, "a login answer other than 503", func() bool {
		var err error
		r, err = api.call(http.MethodPost, addr, "/v1/auth/login", "", body)
		if err != nil {
			t.Fatalf("login: %v", err)
		}
		return r.Status != http.StatusServiceUnavailable
	})
	var a loginAnswer
	r.decode(t, &a)
	return r.Status, a
}

// TestThreatMFALogin: an admin of a tenant whose policy requires MFA for
// admins is refused without a second factor; it enrols (TOTP, RFC 6238)
// from the session it still has, activates with a code and gets recovery
// codes; then a login without a code is refused (401 mfa_required), a wrong
// or replayed code is refused, a fresh code or a recovery code (once) works.
func TestThreatMFALogin(t *testing.T) {
	if testing.Short() {
		t.Skip("system test: skipped with -short")
	}
	_, n, op := threatServer(t, func(c *server.Config) {
		c.Identity.LockoutFailures = 50         // this test fails logins on purpose
		c.Threat.Detect.BruteForceFailures = 50 // and is not an attack
	})
	api := newAPIClient(scaled(10 * time.Second))
	addr := n.addr()
	api.must(t, http.StatusCreated, http.MethodPost, addr, "/v1/tenants", op, map[string]string{"id": "acme"})
	const pw = "correct-horse-battery-42"
	r := mustEventually(t, api, http.StatusCreated, http.MethodPost, addr, "/v1/tenants/acme/users", op,
		map[string]string{"username": "ann", "password": pw, "role": "admin"})
	var ann struct{ ID string }
	r.decode(t, &ann)
	creds := map[string]string{"tenant": "acme", "username": "ann", "password": pw}

	st, a := login(t, api, addr, creds)
	if st != http.StatusOK || a.AccessToken == "" {
		t.Fatalf("login before MFA: %d %+v", st, a)
	}
	session := a.AccessToken

	api.must(t, http.StatusOK, http.MethodPut, addr, "/v1/tenants/acme/threat-policy", op, map[string]any{"require_mfa_for_admins": true})
	if st, a := login(t, api, addr, creds); st != http.StatusForbidden || a.Error.Code != "mfa_required" {
		t.Fatalf("admin without an enrolled factor under the policy: %d %+v, want 403 mfa_required", st, a)
	}

	// Enrol and activate from the existing session.
	mfa := "/v1/tenants/acme/users/" + ann.ID + "/mfa"
	var enr struct {
		Secret string `json:"secret"`
		URI    string `json:"otpauth_uri"`
	}
	api.must(t, http.StatusOK, http.MethodPost, addr, mfa+"/enroll", session, nil).decode(t, &enr)
	if !strings.HasPrefix(enr.URI, "otpauth://totp/") || len(enr.Secret) < 26 {
		t.Fatalf("enrolment = %+v", enr)
	}
	if r, _ := api.call(http.MethodPost, addr, mfa+"/activate", session, map[string]string{"code": "000000"}); r.Status != http.StatusUnauthorized {
		t.Fatalf("activation with a wrong code: %s", r)
	}
	code, _ := auth.DefaultTOTP.Code(enr.Secret, time.Now())
	var act struct {
		RecoveryCodes []string `json:"recovery_codes"`
	}
	api.must(t, http.StatusOK, http.MethodPost, addr, mfa+"/activate", session, map[string]string{"code": code}).decode(t, &act)
	if len(act.RecoveryCodes) != 10 {
		t.Fatalf("recovery codes = %v", act.RecoveryCodes)
	}
	// The secret is stored only sealed: its base32 text is nowhere in the state.
	var stored *fsm.User
	_ = n.srv.FSM().View(func(rd *fsm.Reader) error { stored, _ = rd.User("acme", ann.ID); return nil })
	if len(stored.MFASecret) == 0 || strings.Contains(string(stored.MFASecret), enr.Secret) {
		t.Fatalf("stored MFA secret is missing or in the clear")
	}

	// The MFA-required login is refused without a code.
	if st, a := login(t, api, addr, creds); st != http.StatusUnauthorized || a.Error.Code != "mfa_required" {
		t.Fatalf("login without a code: %d %+v, want 401 mfa_required", st, a)
	}
	bad := map[string]string{"tenant": "acme", "username": "ann", "password": pw, "totp": "123456"}
	if code == "123456" {
		bad["totp"] = "654321"
	}
	if st, a := login(t, api, addr, bad); st != http.StatusUnauthorized || a.Error.Code != "mfa_required" {
		t.Fatalf("login with a wrong code: %d %+v", st, a)
	}
	// The activation consumed its code's step: the next step's code works
	// (±1 step of skew), once.
	next, _ := auth.DefaultTOTP.Code(enr.Secret, time.Now().Add(30*time.Second))
	withCode := map[string]string{"tenant": "acme", "username": "ann", "password": pw, "totp": next}
	if st, a := login(t, api, addr, withCode); st != http.StatusOK || a.AccessToken == "" {
		t.Fatalf("login with a fresh code: %d %+v", st, a)
	}
	if st, _ := login(t, api, addr, withCode); st != http.StatusUnauthorized {
		t.Fatalf("replayed code: %d, want 401", st)
	}
	// A recovery code works once.
	rc := map[string]string{"tenant": "acme", "username": "ann", "password": pw, "recovery_code": act.RecoveryCodes[3]}
	if st, a := login(t, api, addr, rc); st != http.StatusOK || a.AccessToken == "" {
		t.Fatalf("login with a recovery code: %d %+v", st, a)
	}
	if st, _ := login(t, api, addr, rc); st != http.StatusUnauthorized {
		t.Fatalf("a recovery code used twice: %d, want 401", st)
	}
	var status struct {
		Enrolled bool `json:"enrolled"`
		Required bool `json:"required"`
		Left     int  `json:"recovery_codes_left"`
	}
	api.must(t, http.StatusOK, http.MethodGet, addr, mfa, op, nil).decode(t, &status)
	if !status.Enrolled || !status.Required || status.Left != 9 {
		t.Fatalf("mfa status = %+v", status)
	}
}

// TestThreatRequireMFAResponse: a developer creating keys faster than
// velocity allows (20 in 10 s; here in a fraction of a second, which
// recommends block) in a tenant whose policy caps automatic responses at
// require_mfa gets a require_mfa response: with no second factor enrolled,
// its next login is refused (403 mfa_required) until an admin undoes the
// anomaly.
func TestThreatRequireMFAResponse(t *testing.T) {
	if testing.Short() {
		t.Skip("system test: skipped with -short")
	}
	_, n, op := threatServer(t, nil)
	api := newAPIClient(scaled(10 * time.Second))
	addr := n.addr()
	api.must(t, http.StatusCreated, http.MethodPost, addr, "/v1/tenants", op, map[string]string{"id": "acme"})
	api.must(t, http.StatusOK, http.MethodPut, addr, "/v1/tenants/acme/threat-policy", op, map[string]any{"max_level": "require_mfa"})
	const pw = "correct-horse-battery-42"
	mustEventually(t, api, http.StatusCreated, http.MethodPost, addr, "/v1/tenants/acme/users", op,
		map[string]string{"username": "dev", "password": pw, "role": "developer"})
	creds := map[string]string{"tenant": "acme", "username": "dev", "password": pw}
	st, a := login(t, api, addr, creds)
	if st != http.StatusOK {
		t.Fatalf("login: %d %+v", st, a)
	}
	for i := 0; i < 22; i++ {
		api.must(t, http.StatusCreated, http.MethodPost, addr, "/v1/tenants/acme/api-keys", a.AccessToken,
			map[string]string{"name": "k" + strconv.Itoa(i), "role": "readonly"})
	}
	var page struct {
		Anomalies []*fsm.Anomaly `json:"anomalies"`
	}
	threatWait(t, 10*time.Second, "the velocity anomaly", func() bool {
		api.must(t, http.StatusOK, http.MethodGet, addr, "/v1/tenants/acme/anomalies?kind=velocity", op, nil).decode(t, &page)
		return len(page.Anomalies) == 1
	})
	an := page.Anomalies[0]
	if an.Level != fsm.LevelBlock || len(an.Actions) != 1 || an.Actions[0].Kind != fsm.RespRequireMFA || !an.Actions[0].Applied {
		t.Fatalf("anomaly = %+v", an)
	}
	if st, a := login(t, api, addr, creds); st != http.StatusForbidden || a.Error.Code != "mfa_required" {
		t.Fatalf("login after require_mfa: %d %+v, want 403 mfa_required", st, a)
	}
	api.must(t, http.StatusOK, http.MethodPost, addr, "/v1/tenants/acme/anomalies/"+an.ID+"/undo", op, nil)
	if st, _ := login(t, api, addr, creds); st != http.StatusOK {
		t.Fatalf("login after the undo: %d", st)
	}
}
