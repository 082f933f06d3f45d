package test

import (
	"strings"
	"testing"
	"time"

	"github.com/allsource/guard/auth"
)

// TestMFAAndThreatCLI drives `allsource mfa …`, `allsource threat-policy …`
// and `allsource anomaly …` against a server process: a user enrols and
// activates a TOTP second factor and then needs it to log in, an admin
// disables it; a tenant's policy is set; five failed logins make a
// brute-force anomaly that is listed, read and undone. Bad input fails
// clearly and changes nothing.
func TestMFAAndThreatCLI(t *testing.T) {
	bin, env, cli, _ := cliServer(t, "m1")
	cli("", "tenant", "create", "acme")
	var carol struct{ ID string }
	jsonInto(t, cli(cliPassword+"\n", "user", "create", "-tenant", "acme", "carol", "-role", "developer"), &carol)
	// The first login may meet the key material still loading (503).
	login := func(extra ...string) (string, string, error) {
		return runBinSettled(t, bin, cliPassword+"\n", withToken(env, ""), append([]string{"login", "acme", "carol"}, extra...)...)
	}
	out, stderr, err := login()
	if err != nil {
		t.Fatalf("login: %v: %s", err, stderr)
	}
	asCarol := withToken(env, strings.TrimSpace(out))

	// ---- mfa ----
	var st struct{ Enrolled, Pending bool }
	jsonInto(t, cli("", "mfa", "status", "acme", carol.ID), &st)
	if st.Enrolled || st.Pending {
		t.Fatalf("mfa status before enrolment: %+v", st)
	}
	mustFail(t, bin, "", env, []string{"usage: allsource mfa enroll TENANT USER_ID"}, "mfa", "enroll", "acme")
	mustFail(t, bin, "", env, []string{"forbidden", "own second factor"}, "mfa", "enroll", "acme", carol.ID)
	var enr struct {
		Secret string `json:"secret"`
		URI    string `json:"otpauth_uri"`
	}
	if out, stderr, err := runBin(bin, "", asCarol, "mfa", "enroll", "acme", carol.ID); err != nil {
		t.Fatalf("mfa enroll: %v: %s", err, stderr)
	} else {
		jsonInto(t, out, &enr)
	}
	if enr.Secret == "" || !strings.HasPrefix(enr.URI, "otpauth://") {
		t.Fatalf("mfa enroll answered %+v", enr)
	}
	mustFail(t, bin, "", asCarol, []string{"allsource mfa:"}, "mfa", "activate", "acme", carol.ID, "-code", "000000")
	jsonInto(t, cli("", "mfa", "status", "acme", carol.ID), &st)
	if st.Enrolled || !st.Pending {
		t.Fatalf("mfa status after a wrong activation code: %+v, want pending only", st)
	}
	now := time.Now()
	code, err := auth.DefaultTOTP.Code(enr.Secret, now)
	if err != nil {
		t.Fatal(err)
	}
	var act struct {
		Codes []string `json:"recovery_codes"`
	}
	if out, stderr, err := runBin(bin, "", asCarol, "mfa", "activate", "acme", carol.ID, "-code", code); err != nil {
		t.Fatalf("mfa activate: %v: %s", err, stderr)
	} else {
		jsonInto(t, out, &act)
	}
	if len(act.Codes) == 0 {
		t.Fatal("mfa activate gave no recovery codes")
	}
	jsonInto(t, cli("", "mfa", "status", "acme", carol.ID), &st)
	if !st.Enrolled || st.Pending {
		t.Fatalf("mfa status after activation: %+v", st)
	}
	if _, stderr, err := login(); err == nil || !strings.Contains(stderr, "mfa_required") {
		t.Fatalf("login without a code after enrolment: err %v, stderr %q; want mfa_required", err, stderr)
	}
	// The next step's code (within the allowed skew, after the one used).
	next, err := auth.DefaultTOTP.Code(enr.Secret, now.Add(auth.DefaultTOTP.Period))
	if err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := login("-totp", next); err != nil {
		t.Fatalf("login with the TOTP code: %v: %s", err, stderr)
	}
	// A recovery code instead (a lost device): it works once.
	mustFail(t, bin, cliPassword+"\n", withToken(env, ""), []string{"give one second factor"},
		"login", "acme", "carol", "-totp", next, "-recovery-code", act.Codes[0])
	out, stderr, err = login("-recovery-code", act.Codes[0], "-json")
	if err != nil {
		t.Fatalf("login with a recovery code: %v: %s", err, stderr)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
	}
	jsonInto(t, out, &tok)
	if tok.AccessToken == "" || tok.TokenType == "" {
		t.Fatalf("login -json printed %q; want the server's answer with access_token and token_type", out)
	}
	if _, stderr, err := login("-recovery-code", act.Codes[0]); err == nil {
		t.Fatalf("the same recovery code logged in twice (stderr %q)", stderr)
	}
	// An admin (here the operator) disables it without a code: a lost device.
	cli("", "mfa", "disable", "acme", carol.ID)
	jsonInto(t, cli("", "mfa", "status", "acme", carol.ID), &st)
	if st.Enrolled {
		t.Fatalf("mfa status after disable: %+v", st)
	}
	if _, stderr, err := login(); err != nil {
		t.Fatalf("login after the second factor was disabled: %v: %s", err, stderr)
	}

	// ---- threat-policy ----
	if out := cli("", "threat-policy", "get", "-tenant", "acme"); !strings.Contains(out, `"revoke_access"`) {
		t.Fatalf("default policy:\n%s", out)
	}
	// Act on nothing above alert: the brute force below must not lock carol
	// or block the CLI's own address.
	cli("", "threat-policy", "set", "-tenant", "acme", "-max-level", "alert", "-lock-user-for", "5m")
	mustFail(t, bin, "", env, []string{"invalid_argument"}, "threat-policy", "set", "-tenant", "acme", "-max-level", "severe")
	mustFail(t, bin, "", env, []string{"-auto-respond must be true or false"}, "threat-policy", "set", "-tenant", "acme", "-auto-respond", "maybe")
	if out := cli("", "threat-policy", "get", "-tenant", "acme"); !strings.Contains(out, `"max_level": "alert"`) || !strings.Contains(out, `"lock_user_for": "5m0s"`) {
		t.Fatalf("policy after the refused changes:\n%s", out)
	}

	// ---- anomaly ----
	for range 5 {
		if _, _, err := runBin(bin, "wrong-password-123456\n", withToken(env, ""), "login", "acme", "carol"); err == nil {
			t.Fatal("login with a wrong password succeeded")
		}
	}
	var list string
	waitFor(t, 30*time.Second, "the brute-force anomaly in anomaly list", func() bool {
		list = cli("", "anomaly", "list", "-tenant", "acme", "-kind", "brute_force")
		return strings.Contains(list, "brute_force")
	})
	var page struct {
		Anomalies []struct {
			ID, Kind, Level string
		} `json:"anomalies"`
	}
	jsonInto(t, cli("", "anomaly", "list", "-tenant", "acme", "-json"), &page)
	if len(page.Anomalies) != 1 || page.Anomalies[0].Kind != "brute_force" {
		t.Fatalf("anomalies: %+v; want one brute_force", page.Anomalies)
	}
	id := page.Anomalies[0].ID
	if out := cli("", "anomaly", "list", "-tenant", "acme", "-kind", "velocity"); strings.Contains(out, id) {
		t.Fatalf("anomaly list -kind velocity shows the brute force:\n%s", out)
	}
	out = cli("", "anomaly", "get", "-tenant", "acme", id)
	var one struct {
		Actions []struct {
			Kind    string
			Applied bool
		}
	}
	jsonInto(t, out, &one)
	if !strings.Contains(out, carol.ID) {
		t.Fatalf("anomaly get does not name the attacked user:\n%s", out)
	}
	for _, a := range one.Actions {
		if a.Applied {
			t.Fatalf("action %s applied although the policy acts on nothing above alert:\n%s", a.Kind, out)
		}
	}
	mustFail(t, bin, "", env, []string{"not_found"}, "anomaly", "get", "-tenant", "acme", "no-such-anomaly")
	mustFail(t, bin, "", env, []string{"usage: allsource anomaly undo"}, "anomaly", "undo", "-tenant", "acme")
	mustFail(t, bin, "", env, []string{"not_found"}, "anomaly", "undo", "-tenant", "acme", "no-such-anomaly")
	cli("", "anomaly", "undo", "-tenant", "acme", id)
	if out := cli("", "anomaly", "list", "-tenant", "acme"); !strings.Contains(out, "undone") {
		t.Fatalf("anomaly list after undo:\n%s", out)
	}
	// The failed logins locked the account (login lockout, not a threat
	// response: the policy acts on nothing above alert); an admin unlocks it.
	var u struct{ Locked bool }
	jsonInto(t, cli("", "user", "get", "-tenant", "acme", carol.ID), &u)
	if !u.Locked {
		t.Fatal("carol is not locked after five failed logins")
	}
	cli("", "user", "update", "-tenant", "acme", carol.ID, "-unlock")
	if _, stderr, err := login(); err != nil {
		t.Fatalf("login after the unlock: %v: %s", err, stderr)
	}
}
