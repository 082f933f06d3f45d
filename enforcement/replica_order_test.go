package enforcement

import (
	"slices"
	"testing"
	"time"
)

func TestLastTriedPutsRecentFailuresLast(t *testing.T) {
	now := time.Now()
	failed := map[string]time.Time{"b:1": now.Add(-time.Second), "old:1": now.Add(-time.Minute)}
	got := lastTried([]string{"b:1", "a:1", "old:1", "c:1"}, failed, now)
	if want := []string{"a:1", "old:1", "c:1", "b:1"}; !slices.Equal(got, want) {
		t.Fatalf("order %v, want %v", got, want)
	}
	if _, ok := failed["old:1"]; ok {
		t.Fatal("a failure older than 10 s is still remembered")
	}
	if got := lastTried([]string{"b:1"}, failed, now); !slices.Equal(got, []string{"b:1"}) {
		t.Fatalf("a lone failed server must still be tried: %v", got)
	}
}
