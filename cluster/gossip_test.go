package cluster

import (
	"fmt"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"
)

func freeGossipAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func newTestGossip(t *testing.T, name, httpAddr string) *Gossip {
	t.Helper()
	var g *Gossip
	var err error
	for try := 0; try < 5; try++ { // the port may be taken (UDP) between reservation and use
		g, err = NewGossip(GossipConfig{Name: name, Bind: freeGossipAddr(t), Fast: true, JoinToken: "gossip-test-token",
			Meta: NodeMeta{HTTPAddr: httpAddr}, Logger: slog.New(slog.DiscardHandler)})
		if err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Leave(time.Second) })
	return g
}

// TestGossipMembersWhileStateChanges: Members and Member are read while
// memberlist applies alive messages for the same nodes (each UpdateNode
// re-announces a node with a higher incarnation, which memberlist applies by
// rewriting the node's address and metadata). Run with -race: reading
// memberlist's *Node values outside its lock raced with those writes (found
// by the race detector in test/, TestEdgeFleetLimit).
func TestGossipMembersWhileStateChanges(t *testing.T) {
	a := newTestGossip(t, "a", "127.0.0.1:1001")
	b := newTestGossip(t, "b", "127.0.0.1:1002")
	if _, err := b.Join([]string{a.Addr()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a and b to see each other", func() bool {
		m, ok := a.Member("b")
		return ok && m.Meta.HTTPAddr == "127.0.0.1:1002" && len(b.Members()) == 2
	})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, m := range a.Members() {
				if m.Name == "b" && m.Meta.HTTPAddr != "127.0.0.1:1002" {
					panic(fmt.Sprintf("b's metadata read as %+v", m))
				}
			}
			if m, ok := a.Member("b"); ok && m.Addr != b.Addr() {
				panic(fmt.Sprintf("b's address read as %q, want %q", m.Addr, b.Addr()))
			}
		}
	}()
	for i := 0; i < 20; i++ {
		if err := b.ml.UpdateNode(time.Second); err != nil { // returns once the message is out
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if n := a.NumMembers(); n != 2 {
		t.Fatalf("a sees %d members", n)
	}
}
