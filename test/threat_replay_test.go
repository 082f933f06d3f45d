package test

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/allsource/guard/fsm"
	"github.com/allsource/guard/threat"
)

// describe renders detections for failure messages.
func describe(ds []threat.Detection) string {
	var b strings.Builder
	for _, d := range ds {
		fmt.Fprintf(&b, "\n  %s seq=%d score=%.3f level=%s key=%s subject=%+v: %s", d.Kind, d.Seq, d.Score, d.Level, d.Key, d.Subject, d.Summary)
		for _, f := range d.Factors {
			fmt.Fprintf(&b, "\n      %s=%g (threshold %g) %s", f.Name, f.Value, f.Threshold, f.Detail)
		}
	}
	return b.String()
}

// factor returns a detection's factor by name.
func factor(t testing.TB, d threat.Detection, name string) fsm.Factor {
	t.Helper()
	for _, f := range d.Factors {
		if f.Name == name {
			return f
		}
	}
	t.Fatalf("detection %s has no factor %s:%s", d.Kind, name, describe([]threat.Detection{d}))
	return fsm.Factor{}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-3 }

// only keeps the detections of kind.
func only(ds []threat.Detection, kind fsm.AnomalyKind) []threat.Detection {
	var out []threat.Detection
	for _, d := range ds {
		if d.Kind == kind {
			out = append(out, d)
		}
	}
	return out
}

// TestThreatReplayBruteForce: one address tries eight passwords for alice
// within three minutes, among a normal day's traffic. The fifth failure is
// brute force (5 in 15 min): score 0.7 (block), subject alice and the
// address; later failures stay quiet (cool-down) and nothing else is raised.
func TestThreatReplayBruteForce(t *testing.T) {
	s := newThreatStream()
	normalOffice(s, "acme", 1, 0)
	alice := hexUser(900)
	attack := threatMonday.Add(11 * time.Hour)
	var fifth *fsm.AuditEntry
	for i := 0; i < 8; i++ {
		e := s.add(loginFailure("acme", alice, "alice", "198.51.100.7", attack.Add(time.Duration(i)*20*time.Second)))
		if i == 4 {
			fifth = e
		}
	}
	ds := replayThreat(t, threat.Config{}, s.sorted())
	if len(ds) != 1 {
		t.Fatalf("want exactly one detection, got %d:%s", len(ds), describe(ds))
	}
	d := ds[0]
	if d.Kind != fsm.AnomalyBruteForce || d.Seq != fifth.Seq || !near(d.Score, 0.7) || d.Level != fsm.LevelBlock {
		t.Fatalf("detection = %s; want brute_force at seq %d, score 0.7, block", describe(ds), fifth.Seq)
	}
	if d.Subject.UserID != alice || d.Subject.IP != "198.51.100.7" || d.Subject.Username != "alice" {
		t.Errorf("subject = %+v", d.Subject)
	}
	if f := factor(t, d, "failed_logins"); f.Value != 5 || f.Threshold != 5 {
		t.Errorf("failed_logins = %+v", f)
	}
	if f := factor(t, d, "distinct_ips"); f.Value != 1 {
		t.Errorf("distinct_ips = %+v", f)
	}
	if f := factor(t, d, "dominant_ip_share"); f.Value != 1 || f.Detail != "198.51.100.7" {
		t.Errorf("dominant_ip_share = %+v", f)
	}
	// The policy turns it into: lock alice for 15 minutes, block the address
	// for an hour (tenant rule).
	now := attack.Add(2 * time.Minute)
	acts := threat.Plan(&d, fsm.DefaultThreatPolicy("acme"), now, nil)
	if len(acts) != 2 || acts[0].Kind != fsm.RespLockUser || acts[0].Target != alice || !acts[0].Until.Equal(now.Add(15*time.Minute)) ||
		acts[1].Kind != fsm.RespBlockIP || acts[1].Target != "198.51.100.7/32" || acts[1].Scope != "tenant" || !acts[1].Until.Equal(now.Add(time.Hour)) {
		t.Errorf("planned actions = %+v", acts)
	}
}

// TestThreatReplayBruteForceAcrossUsers: one address fails once each for
// five users within 15 minutes: brute force from the address (not any user).
func TestThreatReplayBruteForceAcrossUsers(t *testing.T) {
	s := newThreatStream()
	at := threatMonday.Add(10 * time.Hour)
	for i := 0; i < 6; i++ {
		s.add(loginFailure("acme", hexUser(i), "user"+strconv.Itoa(i), "198.51.100.8", at.Add(time.Duration(i)*time.Minute)))
	}
	ds := replayThreat(t, threat.Config{}, s.sorted())
	if len(ds) != 1 || ds[0].Kind != fsm.AnomalyBruteForce || ds[0].Seq != 5 || ds[0].Subject.IP != "198.51.100.8" ||
		ds[0].Subject.UserID != "" || ds[0].Key != "src:ip:198.51.100.8" {
		t.Fatalf("detections:%s", describe(ds))
	}
	if f := factor(t, ds[0], "distinct_usernames"); f.Value != 5 {
		t.Errorf("distinct_usernames = %+v", f)
	}
}

// TestThreatReplaySlowCredentialStuffing: one address tries a different
// username every four minutes for an hour — never five failures in 15
// minutes, so no brute force — and is caught as credential stuffing at the
// tenth distinct username (score 0.7), once.
func TestThreatReplaySlowCredentialStuffing(t *testing.T) {
	s := newThreatStream()
	normalOffice(s, "acme", 1, 0)
	start := threatMonday.Add(2 * time.Hour)
	var tenth *fsm.AuditEntry
	for i := 0; i < 16; i++ {
		e := s.add(loginFailure("acme", "", "guess"+strconv.Itoa(i)+"@example.com", "203.0.113.50", start.Add(time.Duration(i)*4*time.Minute)))
		if i == 9 {
			tenth = e
		}
	}
	ds := replayThreat(t, threat.Config{}, s.sorted())
	if len(ds) != 1 {
		t.Fatalf("want one detection, got %d:%s", len(ds), describe(ds))
	}
	d := ds[0]
	if d.Kind != fsm.AnomalyCredentialStuffing || d.Seq != tenth.Seq || !near(d.Score, 0.7) || d.Subject.IP != "203.0.113.50" {
		t.Fatalf("detection:%s; want credential_stuffing at seq %d", describe(ds), tenth.Seq)
	}
	if f := factor(t, d, "distinct_usernames"); f.Value != 10 || f.Threshold != 10 {
		t.Errorf("distinct_usernames = %+v", f)
	}
	if f := factor(t, d, "failed_logins"); f.Value != 4 {
		t.Errorf("failed_logins in 15 min = %+v, want 4 (below brute force)", f)
	}
	// From one API key driving logins instead of an address.
	s = newThreatStream()
	key := hexUser(77)
	for i := 0; i < 10; i++ {
		e := loginFailure("acme", "", "u"+strconv.Itoa(i), "", start.Add(time.Duration(i)*10*time.Minute))
		e.Metadata = map[string]string{"api_key_id": key}
		s.add(e)
	}
	ds = replayThreat(t, threat.Config{}, s.sorted())
	if len(ds) != 1 || ds[0].Kind != fsm.AnomalyCredentialStuffing || ds[0].Subject.KeyID != key {
		t.Fatalf("stuffing through a key:%s", describe(ds))
	}
	if acts := threat.Plan(&ds[0], fsm.DefaultThreatPolicy("acme"), start, nil); len(acts) != 1 || acts[0].Kind != fsm.RespRevokeKey || acts[0].Target != key {
		t.Errorf("planned = %+v, want the key revoked", acts)
	}
}

// TestThreatReplayLateNightAdmin: a week of office hours builds ann's
// baseline; on Tuesday of the next week at 03:10 she makes bob an admin.
// That is unusual access (hour 3 has no share of her baseline; role changes
// are new to her and sensitive: 0.45+0.15+0.09 = 0.69) and privilege
// escalation (admin granted outside business hours: 0.6). Nothing else.
func TestThreatReplayLateNightAdmin(t *testing.T) {
	s := newThreatStream()
	normalOffice(s, "acme", 8, 0)
	ann := threatUserActor(hexUser(0), "ann", "admin")
	night := threatMonday.AddDate(0, 0, 8).Add(3*time.Hour + 10*time.Minute) // Tuesday
	e := s.add(fsm.AuditEntry{Tenant: "acme", Time: night, Action: fsm.ActionRoleChanged, Actor: ann, Resource: "user/" + hexUser(5),
		IP: "192.0.2.10", Metadata: map[string]string{"username": "bob", "old_role": "developer", "role": "admin"}})
	ds := replayThreat(t, threat.Config{}, s.sorted())
	if len(ds) != 2 {
		t.Fatalf("want two detections, got %d:%s", len(ds), describe(ds))
	}
	pe, ua := only(ds, fsm.AnomalyPrivilegeEscalation), only(ds, fsm.AnomalyUnusualAccess)
	if len(pe) != 1 || len(ua) != 1 || pe[0].Seq != e.Seq || ua[0].Seq != e.Seq {
		t.Fatalf("detections:%s", describe(ds))
	}
	if !near(pe[0].Score, 0.6) || pe[0].Level != fsm.LevelRequireMFA || pe[0].Subject.UserID != ann.ID {
		t.Errorf("privilege escalation:%s", describe(pe))
	}
	if f := factor(t, pe[0], "local_hour"); f.Value != 3 {
		t.Errorf("local_hour = %+v", f)
	}
	if f := factor(t, pe[0], "previous_role"); f.Detail != "developer" {
		t.Errorf("previous_role = %+v", f)
	}
	if !near(ua[0].Score, 0.69) || ua[0].Level != fsm.LevelRequireMFA {
		t.Errorf("unusual access:%s", describe(ua))
	}
	if f := factor(t, ua[0], "hour_share"); f.Value != 0 || f.Threshold != 0.01 {
		t.Errorf("hour_share = %+v", f)
	}
	factor(t, ua[0], "new_action")
	factor(t, ua[0], "sensitive_action")
	acts := threat.Plan(&ua[0], fsm.DefaultThreatPolicy("acme"), night, nil)
	if len(acts) != 1 || acts[0].Kind != fsm.RespRequireMFA || acts[0].Target != ann.ID {
		t.Errorf("planned = %+v, want MFA required of ann", acts)
	}
}

// TestThreatReplayNoBaselineNoAlert: the same night action by an admin seen
// for only two days raises no unusual access (the baseline does not exist
// yet), only the out-of-hours admin grant.
func TestThreatReplayNoBaselineNoAlert(t *testing.T) {
	s := newThreatStream()
	normalOffice(s, "acme", 2, 0)
	ann := threatUserActor(hexUser(0), "ann", "admin")
	s.add(fsm.AuditEntry{Tenant: "acme", Time: threatMonday.AddDate(0, 0, 2).Add(3 * time.Hour), Action: fsm.ActionRoleChanged, Actor: ann,
		Resource: "user/" + hexUser(5), Metadata: map[string]string{"old_role": "readonly", "role": "admin"}})
	ds := replayThreat(t, threat.Config{}, s.sorted())
	if len(ds) != 1 || ds[0].Kind != fsm.AnomalyPrivilegeEscalation {
		t.Fatalf("detections:%s", describe(ds))
	}
}

// TestThreatReplayExfiltration: the ETL key reads 30-50 times per five
// minutes for two days; then, at 14:00 on Wednesday, it reads 1,200 times
// in five minutes. The read rate crosses 5× its baseline (score 0.6,
// require_mfa), then 5·2^(2/3) ≈ 7.94× (0.7, block: the key is revoked),
// then 20× (0.9, revoke_access): the level rises, so each crossing is raised
// once.
func TestThreatReplayExfiltration(t *testing.T) {
	s := newThreatStream()
	normalOffice(s, "acme", 2, 0)
	key := threatKeyActor(hexUser(50), "etl", "serviceaccount")
	burst := threatMonday.AddDate(0, 0, 2).Add(14*time.Hour + time.Minute)
	for i := 0; i < 1200; i++ {
		s.add(fsm.AuditEntry{Tenant: "acme", Time: burst.Add(time.Duration(i) * 200 * time.Millisecond), Action: "data_read", Actor: key,
			Resource: "dataset/customers"})
	}
	ds := replayThreat(t, threat.Config{}, s.sorted())
	ex := only(ds, fsm.AnomalyDataExfiltration)
	if len(ex) != 3 || len(ds) != 3 {
		t.Fatalf("want three exfiltration detections, got:%s", describe(ds))
	}
	wantLevels := []fsm.ResponseLevel{fsm.LevelRequireMFA, fsm.LevelBlock, fsm.LevelRevokeAccess}
	for i, d := range ex {
		if d.Level != wantLevels[i] || d.Subject.KeyID != key.ID {
			t.Errorf("detection %d:%s; want level %s", i, describe([]threat.Detection{d}), wantLevels[i])
		}
	}
	base := factor(t, ex[0], "baseline_reads").Value
	if base < 30 || base > 50 {
		t.Fatalf("baseline_reads = %v, want within the normal 30-50", base)
	}
	r := factor(t, ex[0], "read_rate_ratio")
	if r.Value < 5 || r.Value > 5.1 || r.Threshold != 5 || !near(ex[0].Score, 0.6) {
		t.Errorf("first crossing: ratio %+v score %v; want 5× and 0.6", r, ex[0].Score)
	}
	if v := factor(t, ex[1], "read_rate_ratio").Value; v < 7.93 || v > 8.1 || !near(ex[1].Score, 0.7) {
		t.Errorf("second crossing: ratio %v score %v; want 7.94× and 0.7", v, ex[1].Score)
	}
	if v := factor(t, ex[2], "read_rate_ratio").Value; v < 19.9 || v > 20.2 || !near(ex[2].Score, 0.9) {
		t.Errorf("third crossing: ratio %v score %v; want 20× and 0.9", v, ex[2].Score)
	}
	if acts := threat.Plan(&ex[1], fsm.DefaultThreatPolicy("acme"), burst, nil); len(acts) != 1 || acts[0].Kind != fsm.RespRevokeKey {
		t.Errorf("block plan = %+v, want the key revoked", acts)
	}
}

// TestThreatReplayVelocity: a developer makes 25 changes in five seconds.
// The twentieth is 20 actions in 3.8 s, 2.6× faster than the 10 s limit:
// score 0.5 + 0.25·log2(2.63)/2 = 0.674 (require_mfa), raised once. A key
// as fast is only alerted on.
func TestThreatReplayVelocity(t *testing.T) {
	s := newThreatStream()
	normalOffice(s, "acme", 1, 0)
	dev := threatUserActor(hexUser(1), "dev", "developer")
	at := threatMonday.Add(20 * time.Hour)
	var twentieth *fsm.AuditEntry
	for i := 0; i < 25; i++ {
		e := s.add(fsm.AuditEntry{Tenant: "acme", Time: at.Add(time.Duration(i) * 200 * time.Millisecond), Action: "schema_updated", Actor: dev,
			Resource: "schema/" + strconv.Itoa(i)})
		if i == 19 {
			twentieth = e
		}
	}
	ds := replayThreat(t, threat.Config{}, s.sorted())
	if len(ds) != 1 || ds[0].Kind != fsm.AnomalyVelocity || ds[0].Seq != twentieth.Seq {
		t.Fatalf("detections:%s", describe(ds))
	}
	want := 0.5 + 0.25*math.Log2(10/3.8)/2
	if !near(ds[0].Score, math.Round(want*1000)/1000) || ds[0].Level != fsm.LevelRequireMFA {
		t.Errorf("score = %v, want %.3f", ds[0].Score, want)
	}
	if f := factor(t, ds[0], "elapsed_seconds"); !near(f.Value, 3.8) || f.Threshold != 10 {
		t.Errorf("elapsed_seconds = %+v", f)
	}
	if f := factor(t, ds[0], "actions"); f.Value != 20 {
		t.Errorf("actions = %+v", f)
	}
	// The same speed from an API key (automation) is an alert, not acted on.
	s = newThreatStream()
	key := threatKeyActor(hexUser(60), "provisioner", "admin")
	for i := 0; i < 25; i++ {
		s.add(fsm.AuditEntry{Tenant: "acme", Time: at.Add(time.Duration(i) * 200 * time.Millisecond), Action: fsm.ActionUserCreated, Actor: key,
			Resource: "user/" + strconv.Itoa(i), Metadata: map[string]string{"role": "developer"}})
	}
	ds = replayThreat(t, threat.Config{}, s.sorted())
	if len(ds) != 1 || ds[0].Kind != fsm.AnomalyVelocity || ds[0].Level != fsm.LevelAlert || ds[0].Subject.KeyID != key.ID {
		t.Fatalf("key velocity:%s", describe(ds))
	}
	if acts := threat.Plan(&ds[0], fsm.DefaultThreatPolicy("acme"), at, nil); len(acts) != 0 {
		t.Errorf("key velocity planned %+v, want nothing", acts)
	}
}

// TestThreatReplayDeniedAttempts: a readonly user is refused admin actions
// three times in two minutes: privilege escalation (0.55, require_mfa); six
// refusals raise it to 0.75 (block).
func TestThreatReplayDeniedAttempts(t *testing.T) {
	s := newThreatStream()
	rita := threatUserActor(hexUser(2), "rita", "readonly")
	at := threatMonday.Add(10 * time.Hour)
	for i := 0; i < 6; i++ {
		s.add(fsm.AuditEntry{Tenant: "acme", Time: at.Add(time.Duration(i) * 40 * time.Second), Action: fsm.ActionPermissionDenied, Actor: rita,
			Resource: "/v1/tenants/acme/users", Outcome: fsm.OutcomeFailure, Metadata: map[string]string{"permission": "admin"}})
	}
	ds := replayThreat(t, threat.Config{}, s.sorted())
	if len(ds) != 2 || ds[0].Seq != 3 || !near(ds[0].Score, 0.55) || ds[1].Seq != 6 || !near(ds[1].Score, 0.75) || ds[1].Level != fsm.LevelBlock {
		t.Fatalf("detections:%s", describe(ds))
	}
	if f := factor(t, ds[0], "permission"); f.Detail != "admin" {
		t.Errorf("permission = %+v", f)
	}
}

// TestThreatReplayKeyAfterNewIP: dev logs in from an address it never used
// and, ten minutes later, mints a developer key (its own role, the ceiling):
// privilege escalation, 0.8 (block: lock dev, revoke the key, block the
// address).
func TestThreatReplayKeyAfterNewIP(t *testing.T) {
	s := newThreatStream()
	normalOffice(s, "acme", 3, 0)
	dev := threatUserActor(hexUser(1), "dev", "developer")
	at := threatMonday.AddDate(0, 0, 3).Add(13 * time.Hour)
	s.add(loginSuccess("acme", dev.ID, "dev", "developer", "198.51.100.99", at))
	newKey := hexUser(4242)
	s.add(fsm.AuditEntry{Tenant: "acme", Time: at.Add(10 * time.Minute), Action: fsm.ActionAPIKeyCreated, Actor: dev,
		Resource: "api-key/" + newKey, IP: "198.51.100.99", Metadata: map[string]string{"name": "x", "role": "developer"}})
	ds := replayThreat(t, threat.Config{}, s.sorted())
	if len(ds) != 1 || ds[0].Kind != fsm.AnomalyPrivilegeEscalation || !near(ds[0].Score, 0.8) {
		t.Fatalf("detections:%s", describe(ds))
	}
	acts := threat.Plan(&ds[0], fsm.DefaultThreatPolicy("acme"), at, nil)
	kinds := []string{}
	for _, a := range acts {
		kinds = append(kinds, string(a.Kind)+":"+a.Target)
	}
	if got := strings.Join(kinds, ","); got != "lock_user:"+dev.ID+",revoke_key:"+newKey+",block_ip:198.51.100.99/32" {
		t.Errorf("planned = %s", got)
	}
}

// TestThreatReplayCleanWeek: two tenants' ordinary week — office hours,
// typos, steady key reads, a night-shift operator who always works at night
// — raises nothing at all.
func TestThreatReplayCleanWeek(t *testing.T) {
	s := newThreatStream()
	normalOffice(s, "acme", 7, 0)
	normalOffice(s, "globex", 7, 100)
	// globex's night shift: nia works 22:00-06:00 every day, from one address.
	nia := threatUserActor(hexUser(150), "nia", "admin")
	for d := 0; d < 7; d++ {
		start := threatMonday.AddDate(0, 0, d).Add(22 * time.Hour)
		s.add(loginSuccess("globex", nia.ID, "nia", "admin", "192.0.2.50", start))
		for k := 0; k < 16; k++ {
			s.add(fsm.AuditEntry{Tenant: "globex", Time: start.Add(time.Duration(k)*30*time.Minute + 90*time.Second), Action: fsm.ActionUserUpdated,
				Actor: nia, Resource: "user/" + strconv.Itoa(k), IP: "192.0.2.50"})
		}
	}
	entries := s.sorted()
	ds := replayThreat(t, threat.Config{}, entries)
	if len(ds) != 0 {
		t.Fatalf("a clean week raised %d anomalies (false positives):%s", len(ds), describe(ds))
	}
	if len(entries) < 4500 {
		t.Fatalf("the clean week has only %d entries", len(entries))
	}
}

// TestThreatReplayKMSDecryptExfiltration: the same ETL key, after its normal
// reads, decrypts 1,200 fields in five minutes through /v1/kms/decrypt
// batches. The KMS service audits each batch as one kms_decrypt entry with
// the item count; the exfiltration detector counts the items as reads.
func TestThreatReplayKMSDecryptExfiltration(t *testing.T) {
	s := newThreatStream()
	normalOffice(s, "acme", 2, 0)
	key := threatKeyActor(hexUser(50), "etl", "serviceaccount")
	burst := threatMonday.AddDate(0, 0, 2).Add(14*time.Hour + time.Minute)
	for i := 0; i < 12; i++ {
		s.add(fsm.AuditEntry{Tenant: "acme", Time: burst.Add(time.Duration(i) * 20 * time.Second), Action: fsm.ActionKMSDecrypt, Actor: key,
			Resource: "kms-key/pii", Metadata: map[string]string{"operation": "decrypt", "key": "pii", "count": "100", "failed": "0", "versions": "1"}})
	}
	ds := replayThreat(t, threat.Config{}, s.sorted())
	ex := only(ds, fsm.AnomalyDataExfiltration)
	if len(ex) == 0 || len(ex) != len(ds) || ex[0].Subject.KeyID != key.ID {
		t.Fatalf("want exfiltration detections of the key only, got:%s", describe(ds))
	}
	if r := factor(t, ex[0], "read_rate_ratio"); r.Value < 5 {
		t.Errorf("first crossing: ratio %+v, want at least 5×", r)
	}
}
