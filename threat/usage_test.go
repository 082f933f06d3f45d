package threat

import (
	"sync"
	"testing"
)

func TestUsageMeterCountsAndForgetsIdleTenants(t *testing.T) {
	m := NewUsageMeter()
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				m.Record("t1", 2, i%2 == 0)
				m.Record("t2", 0, true) // cost below 1 counts as 1
			}
		}()
	}
	wg.Wait()
	got := m.Take()
	if u := got["t1"]; u.Demand != 8000 || u.Admitted != 4000 {
		t.Fatalf("t1 %+v, want demand 8000 admitted 4000", u)
	}
	if u := got["t2"]; u.Demand != 4000 || u.Admitted != 4000 {
		t.Fatalf("t2 %+v, want demand 4000 admitted 4000", u)
	}
	m.Record("t1", 1, false)
	got = m.Take()
	if len(got) != 1 || got["t1"].Demand != 1 || got["t1"].Admitted != 0 {
		t.Fatalf("second take %+v, want only t1 with demand 1", got)
	}
	if got = m.Take(); len(got) != 0 {
		t.Fatalf("idle take %+v, want empty", got)
	}
	n := 0
	m.cells.Range(func(any, any) bool { n++; return true })
	if n != 0 {
		t.Fatalf("%d idle tenants still held", n)
	}
}
