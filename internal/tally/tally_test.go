package tally

import (
	"sync"
	"testing"
)

func TestOneRecordingFeedsEveryReader(t *testing.T) {
	m := New()
	fleet, usage := m.NewReader(), m.NewReader()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for i := range 1000 {
				m.Record("t1", 2, i%2 == 0)
				m.Record("t2", 0, true) // cost below 1 counts as 1
			}
		})
	}
	// A reader taking while requests are recorded loses nothing: what it
	// did not see now it sees next time.
	var early map[string]Counts
	wg.Go(func() { early = fleet.Take() })
	wg.Wait()
	late := fleet.Take()
	if d := early["t1"].Demand + late["t1"].Demand; d != 8000 {
		t.Fatalf("fleet reader: t1 demand %d over two takes, want 8000", d)
	}
	got := usage.Take()
	if c := got["t1"]; c != (Counts{Demand: 8000, Admitted: 4000}) {
		t.Fatalf("usage reader: t1 %+v, want demand 8000 admitted 4000", c)
	}
	if c := got["t2"]; c != (Counts{Demand: 4000, Admitted: 4000}) {
		t.Fatalf("usage reader: t2 %+v, want demand 4000 admitted 4000", c)
	}
	// Readers are independent: the usage reader's take did not reset the
	// fleet reader's counts, nor the other way round.
	m.Record("t1", 3, false)
	if got := fleet.Take(); len(got) != 1 || got["t1"] != (Counts{Demand: 3}) {
		t.Fatalf("fleet reader after one request: %+v, want only t1 demand 3", got)
	}
	if got := usage.Take(); len(got) != 1 || got["t1"] != (Counts{Demand: 3}) {
		t.Fatalf("usage reader after one request: %+v, want only t1 demand 3", got)
	}
	if got := usage.Take(); len(got) != 0 {
		t.Fatalf("idle take %+v, want empty", got)
	}
}

func TestAdmittedNeverExceedsDemandAndIsNotLost(t *testing.T) {
	m := New()
	r := m.NewReader()
	m.Record("t", 5, false)
	r.Take()
	// An admission seen without new demand (its demand was counted in the
	// previous take) is held back, then reported with the next demand.
	c := m.cellOf(t, "t")
	c.admitted.Add(5)
	if got := r.Take(); len(got) != 0 {
		t.Fatalf("take with no new demand: %+v, want empty", got)
	}
	m.Record("t", 5, true)
	if got := r.Take()["t"]; got != (Counts{Demand: 5, Admitted: 5}) {
		t.Fatalf("take %+v, want demand 5 admitted 5 (the rest carried on)", got)
	}
	m.Record("t", 5, false)
	if got := r.Take()["t"]; got != (Counts{Demand: 5, Admitted: 5}) {
		t.Fatalf("take %+v, want demand 5 admitted 5 (the carried admission)", got)
	}
}

func TestRetainDropsGoneTenants(t *testing.T) {
	m := New()
	r := m.NewReader()
	m.Record("gone", 1, true)
	m.Record("kept", 1, true)
	r.Take()
	m.Retain(func(t string) bool { return t == "kept" })
	if _, ok := m.cells.Load("gone"); ok {
		t.Fatal("a dropped tenant's cell is still held")
	}
	r.Take()
	if _, ok := r.seen["gone"]; ok {
		t.Fatal("the reader still remembers a dropped tenant")
	}
	// Back again: a new cell, counted from zero.
	m.Record("gone", 2, false)
	if got := r.Take(); got["gone"] != (Counts{Demand: 2}) || len(got) != 1 {
		t.Fatalf("take after the tenant came back: %+v, want only gone demand 2", got)
	}
}

func (m *Meter) cellOf(t *testing.T, tenant string) *cell {
	t.Helper()
	v, ok := m.cells.Load(tenant)
	if !ok {
		t.Fatalf("no cell for %s", tenant)
	}
	return v.(*cell)
}

func BenchmarkRecord(b *testing.B) {
	m := New()
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = "tenant-" + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676))
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			m.Record(keys[i%len(keys)], 1, true)
			i++
		}
	})
}
