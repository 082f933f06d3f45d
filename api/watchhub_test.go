package api

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/fsm"
	"github.com/hashicorp/raft"
)

type hubFixture struct {
	t    *testing.T
	f    *fsm.FSM
	hub  *WatchHub
	idx  uint64
	now  time.Time
	peps []byte
}

type fixedSecrets struct{ pepper []byte }

func (s fixedSecrets) APIKeyPepper() ([]byte, bool)        { return s.pepper, s.pepper != nil }
func (s fixedSecrets) SigningSecret(string) ([]byte, bool) { return nil, false }

func newHubFixture(t *testing.T, cfg WatchHubConfig) *hubFixture {
	cfg.JoinToken = "hub-test-join-token-0123456789"
	cfg.Logger = slog.New(slog.DiscardHandler)
	hf := &hubFixture{t: t, now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	if cfg.Now == nil {
		cfg.Now = func() time.Time { return hf.now }
	}
	hf.hub = NewWatchHub(cfg)
	f, err := fsm.Open(t.TempDir(), fsm.Options{Logger: cfg.Logger, OnApply: hf.hub.OnApply, OnRestore: hf.hub.OnRestore})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	hf.f = f
	hf.hub.Attach(f)
	return hf
}

var hubOperator = fsm.Principal{Kind: fsm.PrincipalOperator, ID: "root", Name: "operator", Role: auth.RoleOperator}

func (hf *hubFixture) apply(typ fsm.CommandType, payload any) uint64 {
	hf.t.Helper()
	c, err := fsm.NewCommand(typ, fsm.Header{Principal: hubOperator, Time: hf.now.UnixNano()}, payload)
	if err != nil {
		hf.t.Fatal(err)
	}
	b, _ := c.Encode()
	hf.idx++
	res := hf.f.Apply(&raft.Log{Index: hf.idx, Type: raft.LogCommand, Data: b}).(*fsm.Result)
	if res.Err != nil {
		hf.t.Fatalf("%s: %v", typ, res.Err)
	}
	return hf.idx
}

func (hf *hubFixture) take(s *watchSub) []map[string]any {
	frames, _, _, _ := hf.hub.take(s)
	var out []map[string]any
	for _, fr := range frames {
		var m map[string]any
		if err := json.Unmarshal(fr, &m); err != nil {
			hf.t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

func TestWatchHubResumeAndResync(t *testing.T) {
	hf := newHubFixture(t, WatchHubConfig{WindowEvents: 3})
	i1 := hf.apply(fsm.CmdCreateTenant, &fsm.CreateTenantCmd{ID: "acme"})
	// A fresh edge (since 0) resyncs; its subscription queues later events.
	sub, resync, latest := hf.hub.subscribe(0, "", 0)
	if !resync || latest != i1 {
		t.Fatalf("resync %v latest %d", resync, latest)
	}
	snap, err := hf.hub.snapshot()
	if err != nil || snap.index != i1 || snap.count != 2 { // tenant + its rate limit
		t.Fatalf("snapshot %+v %v", snap, err)
	}
	if bytes.Contains(snap.body, []byte("audit")) {
		t.Fatal("the view snapshot carries audit data")
	}
	i2 := hf.apply(fsm.CmdSetTenantStatus, &fsm.SetTenantStatusCmd{ID: "acme", Status: fsm.TenantSuspended})
	got := hf.take(sub)
	if len(got) != 1 || got[0]["type"] != "changes" || uint64(got[0]["index"].(float64)) != i2 {
		t.Fatalf("events %v", got)
	}
	if !strings.Contains(toJSON(got[0]), `"status":"suspended"`) {
		t.Fatalf("the change does not carry the new status: %s", toJSON(got[0]))
	}
	hf.hub.unsubscribe(sub)

	// An edge at i1 resumes from the window: exactly the events after it.
	sub, resync, _ = hf.hub.subscribe(i1, clusterID(hf.f), 0)
	if resync {
		t.Fatal("resume within the window resynced")
	}
	if got := hf.take(sub); len(got) != 1 {
		t.Fatalf("resumed events %v", got)
	}
	hf.hub.unsubscribe(sub)
	// Another cluster's index, or one the window no longer holds, resyncs.
	if _, resync, _ = hf.hub.subscribe(i1, "someone-else", 0); !resync {
		t.Fatal("a foreign cluster id resumed")
	}
	for range 5 {
		hf.apply(fsm.CmdUpdateTenant, &fsm.UpdateTenantCmd{ID: "acme", Tier: ptr("professional")})
		hf.apply(fsm.CmdUpdateTenant, &fsm.UpdateTenantCmd{ID: "acme", Tier: ptr("free")})
	}
	if _, resync, _ = hf.hub.subscribe(i1, clusterID(hf.f), 0); !resync {
		t.Fatal("an index older than the window resumed")
	}
	// An index beyond the server's log (a rebuilt cluster) resyncs.
	if _, resync, _ = hf.hub.subscribe(hf.idx+100, clusterID(hf.f), hf.idx); !resync {
		t.Fatal("an index past the log resumed")
	}
	st := hf.hub.Stats()
	if st.Window != 3 || st.Resyncs < 3 || st.Resumes != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestWatchHubWindowAgeAndOverflow(t *testing.T) {
	hf := newHubFixture(t, WatchHubConfig{WindowAge: time.Minute, QueueLimit: 2})
	i1 := hf.apply(fsm.CmdCreateTenant, &fsm.CreateTenantCmd{ID: "acme"})
	hf.now = hf.now.Add(2 * time.Minute)
	old, resync, _ := hf.hub.subscribe(i1-1, clusterID(hf.f), 0)
	if !resync {
		t.Fatal("an event older than the window's age was resumed")
	}
	hf.hub.unsubscribe(old)
	sub, _, _ := hf.hub.subscribe(hf.idx, clusterID(hf.f), 0)
	for _, tier := range []string{"professional", "free", "professional"} {
		hf.apply(fsm.CmdUpdateTenant, &fsm.UpdateTenantCmd{ID: "acme", Tier: ptr(tier)})
	}
	_, _, closed, reason := hf.hub.take(sub)
	if !closed || reason != "overflow" || hf.hub.Stats().Overflows != 1 {
		t.Fatalf("slow stream not closed: %v %q", closed, reason)
	}
}

func TestWatchHubRestoreResetsStreams(t *testing.T) {
	hf := newHubFixture(t, WatchHubConfig{})
	hf.apply(fsm.CmdCreateTenant, &fsm.CreateTenantCmd{ID: "acme"})
	sub, _, _ := hf.hub.subscribe(hf.idx, clusterID(hf.f), 0)
	hf.hub.OnRestore(hf.idx + 10)
	if _, _, closed, reason := hf.hub.take(sub); !closed || reason != "reset" {
		t.Fatalf("restore did not reset: %v %q", closed, reason)
	}
	if st := hf.hub.Stats(); st.Base != hf.idx+10 || st.Window != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestWatchHubSealsThePepper(t *testing.T) {
	hf := newHubFixture(t, WatchHubConfig{})
	pepper := []byte("a-pepper-of-32-bytes-or-more-0123456789")
	sub, _, _ := hf.hub.subscribe(0, "", 0)
	hf.hub.SetSecrets(fixedSecrets{pepper: pepper})
	got := hf.take(sub)
	if len(got) != 1 || got[0]["type"] != "secrets" {
		t.Fatalf("frames %v", got)
	}
	js := toJSON(got[0])
	if strings.Contains(js, string(pepper)) {
		t.Fatal("the pepper crossed in the clear")
	}
	secs := hf.hub.currentSecrets()
	if len(secs) != 1 {
		t.Fatalf("secrets %v", secs)
	}
	plain, err := fsm.OpenViewSecret(hf.hub.cfg.JoinToken, fsm.SecretPepper, secs[0].Secret.Sealed)
	if err != nil || string(plain) != string(pepper) {
		t.Fatalf("sealed pepper does not open: %v", err)
	}
	// Unchanged secrets are not pushed again.
	hf.hub.SecretsChanged()
	if got := hf.take(sub); len(got) != 0 {
		t.Fatalf("unchanged secret pushed again: %v", got)
	}
}

func clusterID(f *fsm.FSM) string {
	var id string
	_ = f.View(func(r *fsm.Reader) error { id = r.ClusterID(); return nil })
	return id
}

func ptr[T any](v T) *T { return &v }

func toJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
