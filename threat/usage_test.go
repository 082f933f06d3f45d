package threat

import (
	"testing"

	"github.com/allsource/guard/internal/tally"
)

func TestUsageMeterTakesWhatThePipelineRecorded(t *testing.T) {
	counts := tally.New()
	counts.Record("t1", 2, true)
	m := NewUsageMeter(counts) // a meter made late still reports what came before
	counts.Record("t1", 2, false)
	counts.Record("t2", 0, true) // cost below 1 counts as 1
	got := m.Take()
	if u := got["t1"]; u != (TenantUsage{Demand: 4, Admitted: 2}) {
		t.Fatalf("t1 %+v, want demand 4 admitted 2", u)
	}
	if u := got["t2"]; u != (TenantUsage{Demand: 1, Admitted: 1}) {
		t.Fatalf("t2 %+v, want demand 1 admitted 1", u)
	}
	// Another reader of the same counts (fleet limiting) does not take
	// this meter's counts away.
	counts.NewReader().Take()
	counts.Record("t1", 1, false)
	if got = m.Take(); len(got) != 1 || got["t1"] != (TenantUsage{Demand: 1}) {
		t.Fatalf("second take %+v, want only t1 with demand 1", got)
	}
	if got = m.Take(); len(got) != 0 {
		t.Fatalf("idle take %+v, want empty", got)
	}
}
