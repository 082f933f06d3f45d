package enforcement

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/allsource/guard/fsm"
)

// fakeServer records shipped batches and can be taken down.
type fakeServer struct {
	mu      sync.Mutex
	down    bool
	refuse  bool
	batches []fsm.EdgeAuditBatch
}

func (s *fakeServer) send(_ context.Context, body []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down {
		return errors.New("connection refused")
	}
	if s.refuse {
		return fmt.Errorf("%w: 400", ErrPermanent)
	}
	var b fsm.EdgeAuditBatch
	if err := json.Unmarshal(body, &b); err != nil {
		return err
	}
	s.batches = append(s.batches, b)
	return nil
}

func (s *fakeServer) entries() (n int, uses uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range s.batches {
		for _, e := range b.Entries {
			c := 1
			if v := e.Metadata["count"]; v != "" {
				fmt.Sscan(v, &c)
			}
			n += c
		}
		for _, u := range b.KeyUses {
			uses += u.Count
		}
	}
	return n, uses
}

func auditEvent(i int) fsm.AuditInput {
	return fsm.AuditInput{Tenant: "acme", Time: time.Unix(1700000000, 0), Action: fsm.ActionAuthFailed,
		Actor: fsm.Actor{Kind: fsm.PrincipalAPIKey, ID: fmt.Sprintf("key%d", i)}, IP: "192.0.2.1", Outcome: fsm.OutcomeFailure,
		Metadata: map[string]string{"reason": "bad_api_key_secret"}}
}

func newTestShipper(t *testing.T, dir string, srv *fakeServer, maxSpool int64) *Shipper {
	t.Helper()
	s, err := NewShipper(ShipperConfig{Edge: "e1", Dir: dir, Send: srv.send, MaxSpoolBytes: maxSpool})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestShipperAggregatesAndShips(t *testing.T) {
	srv := &fakeServer{}
	s := newTestShipper(t, t.TempDir(), srv, 0)
	for range 100 {
		s.Record(auditEvent(1)) // one caller, 100 failures: one entry with a count
	}
	s.Record(auditEvent(2))
	for range 1000 {
		s.KeyUsed("0123456789abcdef0123456789abcdef", time.Unix(1700000000, 0))
	}
	if !s.flush(context.Background(), true) {
		t.Fatal("flush failed")
	}
	if len(srv.batches) != 1 || len(srv.batches[0].Entries) != 2 || len(srv.batches[0].KeyUses) != 1 {
		t.Fatalf("batches %+v", srv.batches)
	}
	n, uses := srv.entries()
	if n != 101 || uses != 1000 {
		t.Fatalf("shipped %d events and %d key uses", n, uses)
	}
	if st := s.Stats(); st.Shipped != 3 || st.Dropped != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestShipperSpoolsWhileServersAreDownAndSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	srv := &fakeServer{down: true}
	s := newTestShipper(t, dir, srv, 0)
	for i := range 30 {
		s.Record(auditEvent(i))
		if i%10 == 9 {
			if s.flush(context.Background(), true) {
				t.Fatal("shipping succeeded with the server down")
			}
		}
	}
	if st := s.Stats(); st.SpoolBatches != 3 || st.SpoolEntries != 30 {
		t.Fatalf("spool %+v", st)
	}
	// Restart: a new shipper finds the spooled batches.
	s2 := newTestShipper(t, dir, srv, 0)
	if st := s2.Stats(); st.SpoolBatches != 3 {
		t.Fatalf("after restart: %+v", st)
	}
	srv.mu.Lock()
	srv.down = false
	srv.mu.Unlock()
	s2.Record(auditEvent(99))
	if !s2.flush(context.Background(), true) {
		t.Fatal("flush failed with the server up")
	}
	n, _ := srv.entries()
	if n != 31 {
		t.Fatalf("shipped %d entries, want 31", n)
	}
	// Spooled batches went first, in order.
	if srv.batches[0].Entries[0].Actor.ID != "key0" || srv.batches[len(srv.batches)-1].Entries[0].Actor.ID != "key99" {
		t.Fatalf("order: first %s last %s", srv.batches[0].Entries[0].Actor.ID, srv.batches[len(srv.batches)-1].Entries[0].Actor.ID)
	}
	if st := s2.Stats(); st.SpoolBatches != 0 || st.Dropped != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestShipperSpoolIsBoundedOldestFirst(t *testing.T) {
	srv := &fakeServer{down: true}
	s := newTestShipper(t, t.TempDir(), srv, 2048)
	for i := range 40 {
		s.Record(auditEvent(i))
		s.flush(context.Background(), true)
	}
	st := s.Stats()
	if st.SpoolBytes > 2048+1024 || st.DroppedSpool == 0 || st.Dropped != st.DroppedSpool {
		t.Fatalf("bounded spool: %+v", st)
	}
	srv.mu.Lock()
	srv.down = false
	srv.mu.Unlock()
	s.flush(context.Background(), true)
	n, _ := srv.entries()
	if uint64(n)+st.DroppedSpool != 40 {
		t.Fatalf("shipped %d + dropped %d != 40", n, st.DroppedSpool)
	}
	if srv.batches[len(srv.batches)-1].Entries[0].Actor.ID != "key39" {
		t.Fatal("the newest batch was dropped instead of the oldest")
	}
}

func TestShipperDropsRefusedBatches(t *testing.T) {
	srv := &fakeServer{refuse: true}
	s := newTestShipper(t, "", srv, 0)
	s.Record(auditEvent(1))
	if !s.flush(context.Background(), true) {
		t.Fatal("a refused batch must not block the queue")
	}
	if st := s.Stats(); st.Dropped != 1 || st.SpoolBatches != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestShipperCloseSpoolsPending(t *testing.T) {
	dir := t.TempDir()
	srv := &fakeServer{down: true}
	s := newTestShipper(t, dir, srv, 0)
	go s.Run()
	s.Record(auditEvent(1))
	s.Close()
	s2 := newTestShipper(t, dir, srv, 0)
	if st := s2.Stats(); st.SpoolEntries != 1 {
		t.Fatalf("pending event not spooled on close: %+v", st)
	}
}
