// Package cluster runs the raft node of an AllSource Guard server: bootstrap,
// join, removal, leadership transfer, promotion of caught-up non-voters,
// wait helpers, mTLS for raft, and membership gossip for discovery.
//
// It owns the translation of raft's errors into its own ErrNotLeader at one
// boundary, so the layers above test errors with errors.Is and never look at
// hashicorp/raft's types.
package cluster

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/allsource/guard/fsm"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// ErrNotLeader is returned for an operation that only the leader can do.
var ErrNotLeader = errors.New("not the leader")

// ErrNoLeader is returned when no leader is known.
var ErrNoLeader = errors.New("no leader")

// ErrShutdown is returned after the node was shut down.
var ErrShutdown = errors.New("node is shut down")

// Config configures a node. Zero timeouts take the defaults below.
type Config struct {
	NodeID          string
	DataDir         string
	RaftBind        string // host:port to listen on for raft
	RaftAdvertise   string // host:port peers dial; defaults to RaftBind
	HTTPAddr        string // advertised HTTP API address (announced over gossip)
	GossipBind      string // host:port for memberlist; empty disables gossip
	GossipAdvertise string
	Bootstrap       bool   // bootstrap a new single-voter cluster if there is no state
	JoinToken       string // derives the gossip key

	// ServerTLS and ClientTLS, when set, put raft on mutual TLS.
	ServerTLS, ClientTLS *tls.Config

	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	SnapshotThreshold  uint64
	SnapshotInterval   time.Duration
	TrailingLogs       uint64
	ApplyTimeout       time.Duration

	// CaughtUp reports a non-voter's applied index (the API wiring asks the node
	// over HTTP); the leader promotes it to voter once it is close to the commit
	// index. Nil disables automatic promotion.
	CaughtUp func(ctx context.Context, id, httpAddr string) (uint64, error)
	// PromoteLag is how far behind the leader's commit index a non-voter may be
	// and still be promoted.
	PromoteLag uint64

	FastGossip bool
	Logger     *slog.Logger

	// noSilenceWatch turns off watchLeaderSilence (tests of the vote path).
	noSilenceWatch bool
}

// Default timeouts. A 400 ms heartbeat timeout fails over in about half a
// second (the goal is ≤ 1 s: the timeout, a random spread of up to half of it
// before the first follower campaigns, and the election — failover.go) while
// leaving ~8 heartbeats (sent every timeout/10) of slack for a busy 2-core
// machine before a follower gives up on a live leader. See FAULTS.md for the
// measurements behind them.
//
// The leader lease is as long as raft allows (the heartbeat timeout): a
// leader steps down when a quorum has not answered for that long. At 200 ms,
// scheduling gaps of 200–300 ms on the loaded 2-core machine made healthy
// leaders step down and re-elect themselves (test/faults: an election in the
// 10-minute loaded run, and dozens of extra elections while nodes were being
// killed). The lease does not enter failover — followers elect a new leader
// after their heartbeat timeout whatever it is — it only bounds how long a
// cut-off leader keeps claiming leadership (and answers default-consistency
// reads from its own state; linearizable reads confirm leadership first, and
// it can never commit a write).
//
// The commit timeout is how long an idle leader waits before telling the
// followers the new commit index (raft sends it with the next append): a
// follower applies a write, and the edges watching it enforce it, up to
// 1–2× this after the leader acknowledged it. 5 ms keeps edge propagation
// within its 25 ms p99 goal (DESIGN.md §9; 20 ms measured p50 27 ms, p99
// 40 ms at 50 edges) for ~100–200 empty appends per follower per idle second.
const (
	DefaultHeartbeatTimeout   = 400 * time.Millisecond
	DefaultElectionTimeout    = 400 * time.Millisecond
	DefaultLeaderLeaseTimeout = 400 * time.Millisecond
	DefaultCommitTimeout      = 5 * time.Millisecond
	DefaultApplyTimeout       = 10 * time.Second
)

// LogCacheSize is how many of the newest raft log entries each server keeps
// decoded in memory (raft.NewLogCache): the leader sends followers what it
// has just written and followers apply what they have just received, and
// without the cache both read it back from raft-boltdb and decode it again
// (about a seventh of a write's CPU at concurrency 64, BENCHMARKS.md).
const LogCacheSize = 1024

func (c *Config) setDefaults() {
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = DefaultElectionTimeout
	}
	if c.LeaderLeaseTimeout == 0 {
		c.LeaderLeaseTimeout = DefaultLeaderLeaseTimeout
	}
	if c.CommitTimeout == 0 {
		c.CommitTimeout = DefaultCommitTimeout
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = 8192
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = 30 * time.Second
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = 10240
	}
	if c.ApplyTimeout == 0 {
		c.ApplyTimeout = DefaultApplyTimeout
	}
	if c.PromoteLag == 0 {
		c.PromoteLag = 64
	}
	if c.RaftAdvertise == "" {
		c.RaftAdvertise = c.RaftBind
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Node is one raft server.
type Node struct {
	cfg       Config
	log       *slog.Logger
	fsm       *fsm.FSM
	raft      *raft.Raft
	transport *raft.NetworkTransport
	guarded   *guardedTransport // what raft uses: transport with the pipeline guard and the failover hooks
	failover  *failover
	store     *raftboltdb.BoltStore
	gossip    *Gossip

	leaderReady  atomic.Bool // a barrier committed in the current leader term
	leaderTerm   atomic.Uint64
	closing      chan struct{}
	wg           sync.WaitGroup
	shutdown     sync.Once
	leaderChange chan struct{} // closed and replaced on every observed leader change
	lcMu         sync.Mutex
	caughtUp     atomic.Bool // the FSM has once applied everything committed since this process started
	gossipJoin   atomic.Bool // a gossip rejoin is in flight
}

// New opens (or creates) the node's raft state under cfg.DataDir and starts raft.
func New(cfg Config, f *fsm.FSM) (*Node, error) {
	cfg.setDefaults()
	if cfg.NodeID == "" || cfg.DataDir == "" || cfg.RaftBind == "" {
		return nil, errors.New("cluster: node id, data dir and raft address are required")
	}
	dir := filepath.Join(cfg.DataDir, "raft")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger.With("node", cfg.NodeID), fsm: f, closing: make(chan struct{}),
		leaderChange: make(chan struct{})}

	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db")})
	if err != nil {
		return nil, fmt.Errorf("open raft log: %w", err)
	}
	n.store = store
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, newHclog(n.log, "raft-snap"))
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("open snapshot store: %w", err)
	}
	tcpAdv, err := net.ResolveTCPAddr("tcp", cfg.RaftAdvertise)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("raft advertise address: %w", err)
	}
	var adv net.Addr = tcpAdv
	if tcpAdv.Port == 0 || tcpAdv.IP.IsUnspecified() {
		adv = nil // advertise what the listener got (":0" binds in tests and dev mode)
	}
	tcfg := &raft.NetworkTransportConfig{MaxPool: 8, Timeout: 10 * time.Second, Logger: newHclog(n.log, "raft-net")}
	if cfg.ServerTLS != nil {
		stream, err := newTLSStream(cfg.RaftBind, adv, cfg.ServerTLS, cfg.ClientTLS)
		if err != nil {
			store.Close()
			return nil, fmt.Errorf("raft TLS listener: %w", err)
		}
		tcfg.Stream = stream
		n.transport = raft.NewNetworkTransportWithConfig(tcfg)
	} else {
		n.transport, err = raft.NewTCPTransportWithConfig(cfg.RaftBind, adv, tcfg)
		if err != nil {
			store.Close()
			return nil, fmt.Errorf("raft listener: %w", err)
		}
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	n.failover = newFailover(raft.ServerID(cfg.NodeID), cfg.HeartbeatTimeout, n.log)
	rc.HeartbeatTimeout, rc.ElectionTimeout = n.failover.raftTimeouts(cfg.ElectionTimeout)
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.CommitTimeout
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.TrailingLogs = cfg.TrailingLogs
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = 512
	rc.Logger = newHclog(n.log, "raft")

	hasState, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		n.closeStores()
		return nil, err
	}
	n.guarded = newGuardedTransport(n.transport, tcfg.Timeout, n.failover, n.log)
	logs, err := raft.NewLogCache(LogCacheSize, store)
	if err != nil {
		n.closeStores()
		return nil, err
	}
	r, err := raft.NewRaft(rc, f, logs, store, snaps, n.guarded)
	if err != nil {
		n.closeStores()
		return nil, fmt.Errorf("start raft: %w", err)
	}
	n.raft = r
	n.failover.raft.Store(r)
	if !cfg.noSilenceWatch {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			n.failover.watchLeaderSilence(n.closing)
		}()
	}
	if cfg.Bootstrap && !hasState {
		conf := raft.Configuration{Servers: []raft.Server{{ID: rc.LocalID, Address: n.transport.LocalAddr()}}}
		if err := r.BootstrapCluster(conf).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			n.Shutdown()
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
	}
	if cfg.GossipBind != "" {
		n.gossip, err = NewGossip(GossipConfig{Name: cfg.NodeID, Bind: cfg.GossipBind, Advertise: cfg.GossipAdvertise,
			JoinToken: cfg.JoinToken, Logger: n.log, Fast: cfg.FastGossip,
			Meta: NodeMeta{Role: "server", HTTPAddr: cfg.HTTPAddr, RaftAddr: string(n.transport.LocalAddr())}})
		if err != nil {
			n.Shutdown()
			return nil, err
		}
	}
	n.wg.Add(1)
	go n.watchLeadership()
	n.wg.Add(1)
	go n.watchCatchUp()
	if n.gossip != nil {
		n.wg.Add(1)
		go n.rememberGossipPeers(filepath.Join(cfg.DataDir, "gossip-peers.json"))
	}
	return n, nil
}

// watchCatchUp sets caughtUp once a leader is known and the FSM has applied
// everything committed. Until then the local state is behind the node's own
// log (a restarted server rebuilds it from its snapshot and log), and the API
// must not turn a credential away because it is not there yet (found by
// test/faults: valid operator tokens got 401 from restarted servers).
func (n *Node) watchCatchUp() {
	defer n.wg.Done()
	for {
		if id, _ := n.Leader(); id != "" {
			if commit := n.raft.CommitIndex(); commit > 0 && n.fsm.AppliedIndex() >= n.lastFSMEntry(commit) {
				n.caughtUp.Store(true)
				return
			}
		}
		select {
		case <-n.closing:
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// CaughtUp reports whether the state machine has caught up with the cluster
// at least once since this process started.
func (n *Node) CaughtUp() bool { return n.caughtUp.Load() }

// lastFSMEntry returns the index of the newest entry at or below idx that the
// FSM applies (a command or a configuration change). Raft keeps its no-op and
// barrier entries from the FSM, so the FSM's applied index stops short of a
// commit index that ends with them; waiting for idx itself would hang until
// the next write (found by test/faults: linearizable reads after an idle
// failover timed out). Entries already compacted away are in the snapshot
// the FSM was restored from.
func (n *Node) lastFSMEntry(idx uint64) uint64 {
	first, err := n.store.FirstIndex()
	if err != nil {
		return idx
	}
	for i := idx; i > 0 && i >= first; i-- {
		var l raft.Log
		if err := n.store.GetLog(i, &l); err != nil {
			return i
		}
		if l.Type == raft.LogCommand || l.Type == raft.LogConfiguration {
			return i
		}
	}
	return 0
}

// rememberGossipPeers keeps the gossip address of every raft peer in the data
// dir and rejoins a peer that is missing from gossip. Without it, a server
// restarted without -join (the bootstrap server), or a whole cluster
// restarted at once, could keep a partial gossip view for good — and a
// leader missing from it leaves followers unable to forward writes and
// non-voters unpromoted (found by test/faults: "kill leader", "restart all").
//
// It looks every 200 ms, so that a peer is on record almost as soon as it is
// both in the raft configuration and alive in gossip; rejoins are attempted
// at most every 2 s. With a 2 s look, a bootstrap server killed within 2 s of
// its peers joining had no peer on record and neither had they of it, and
// gossip never re-formed after its restart (found by test/: followers could
// not forward writes to it once it led again).
func (n *Node) rememberGossipPeers(path string) {
	defer n.wg.Done()
	peers := map[string]string{} // raft server id → gossip address
	if b, err := os.ReadFile(path); err == nil {
		_ = json.Unmarshal(b, &peers)
	}
	var lastJoin time.Time
	for {
		cf := n.raft.GetConfiguration()
		if cf.Error() == nil && len(cf.Configuration().Servers) > 0 {
			inRaft := map[string]bool{}
			for _, s := range cf.Configuration().Servers {
				inRaft[string(s.ID)] = true
			}
			old := maps.Clone(peers)
			alive := map[string]bool{}
			for id := range inRaft {
				if m, ok := n.gossip.Member(id); ok && m.Meta.Role == "server" && id != n.cfg.NodeID {
					alive[id] = true
					peers[id] = m.Addr
				}
			}
			var missing []string
			for id := range peers {
				if !inRaft[id] {
					delete(peers, id)
				} else if !alive[id] {
					missing = append(missing, peers[id])
				}
			}
			if len(missing) > 0 && time.Since(lastJoin) >= 2*time.Second && n.gossipJoin.CompareAndSwap(false, true) {
				lastJoin = time.Now()
				go func() { // memberlist's join can wait seconds for a dead address
					defer n.gossipJoin.Store(false)
					_, _ = n.gossip.Join(missing)
				}()
			}
			if !maps.Equal(old, peers) {
				if b, err := json.Marshal(peers); err == nil {
					if err := os.WriteFile(path+".tmp", b, 0o600); err == nil {
						_ = os.Rename(path+".tmp", path)
					}
				}
			}
		}
		select {
		case <-n.closing:
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (n *Node) closeStores() {
	if n.guarded != nil {
		n.guarded.Close()
	} else if n.transport != nil {
		n.transport.Close()
	}
	if n.store != nil {
		n.store.Close()
	}
}

// watchLeadership confirms each new leader term with a barrier (so linearizable
// reads never answer from a leader that has not yet committed in its term),
// runs the promotion loop while leader, and wakes leader-change waiters.
func (n *Node) watchLeadership() {
	defer n.wg.Done()
	obsCh := make(chan raft.Observation, 16)
	obs := raft.NewObserver(obsCh, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	n.raft.RegisterObserver(obs)
	defer n.raft.DeregisterObserver(obs)
	var stopPromote chan struct{}
	for {
		select {
		case <-n.closing:
			if stopPromote != nil {
				close(stopPromote)
			}
			return
		case isLeader := <-n.raft.LeaderCh():
			n.leaderReady.Store(false)
			if stopPromote != nil {
				close(stopPromote)
				stopPromote = nil
			}
			if isLeader {
				term := n.raft.CurrentTerm()
				n.leaderTerm.Store(term)
				go func() {
					if n.raft.Barrier(n.cfg.ApplyTimeout).Error() == nil && n.leaderTerm.Load() == term {
						n.leaderReady.Store(n.raft.State() == raft.Leader)
					}
				}()
				stopPromote = make(chan struct{})
				n.wg.Add(1)
				go n.promoteLoop(stopPromote)
			}
			n.signalLeaderChange()
		case <-obsCh:
			n.signalLeaderChange()
		}
	}
}

func (n *Node) signalLeaderChange() {
	n.lcMu.Lock()
	close(n.leaderChange)
	n.leaderChange = make(chan struct{})
	n.lcMu.Unlock()
}

func (n *Node) leaderChanged() <-chan struct{} {
	n.lcMu.Lock()
	defer n.lcMu.Unlock()
	return n.leaderChange
}

// promoteLoop, on the leader, turns caught-up non-voters into voters.
func (n *Node) promoteLoop(stop chan struct{}) {
	defer n.wg.Done()
	if n.cfg.CaughtUp == nil {
		return
	}
	t := time.NewTicker(300 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		cf := n.raft.GetConfiguration()
		if cf.Error() != nil {
			continue
		}
		for _, s := range cf.Configuration().Servers {
			if s.Suffrage != raft.Nonvoter {
				continue
			}
			httpAddr := ""
			if n.gossip != nil {
				if m, ok := n.gossip.Member(string(s.ID)); ok {
					httpAddr = m.Meta.HTTPAddr
				}
			}
			if httpAddr == "" {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			applied, err := n.cfg.CaughtUp(ctx, string(s.ID), httpAddr)
			cancel()
			commit := n.raft.CommitIndex()
			if err != nil || applied+n.cfg.PromoteLag < commit {
				continue
			}
			err = n.raft.AddVoter(s.ID, s.Address, 0, n.cfg.ApplyTimeout).Error()
			if err != nil {
				n.log.Warn("promote non-voter failed", "id", s.ID, "err", err)
				continue
			}
			n.log.Info("promoted caught-up non-voter to voter", "id", s.ID, "applied", applied, "commit", commit)
		}
	}
}

// translate maps raft's errors onto this package's, at one boundary.
func translate(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress), errors.Is(err, raft.ErrNotVoter):
		return fmt.Errorf("%w: %v", ErrNotLeader, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrShutdown
	}
	return err
}

// Apply proposes a command and waits for it to be applied. It returns the
// FSM's Result (whose Err carries business errors) or a raft error.
func (n *Node) Apply(ctx context.Context, c fsm.Command) (*fsm.Result, error) {
	b, err := c.Encode()
	if err != nil {
		return nil, err
	}
	return n.ApplyRaw(ctx, b)
}

// ApplyRaw proposes an already-encoded command.
func (n *Node) ApplyRaw(ctx context.Context, b []byte) (*fsm.Result, error) {
	timeout := n.cfg.ApplyTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			return nil, context.DeadlineExceeded
		}
	}
	f := n.raft.Apply(b, timeout)
	if err := f.Error(); err != nil {
		return nil, translate(err)
	}
	res, ok := f.Response().(*fsm.Result)
	if !ok {
		return nil, fmt.Errorf("unexpected FSM response %T", f.Response())
	}
	return res, nil
}

// IsLeader reports whether this node is the leader.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// State is the raft role: Leader, Follower, Candidate or Shutdown.
func (n *Node) State() string { return n.raft.State().String() }

// ID is this node's id.
func (n *Node) ID() string { return n.cfg.NodeID }

// RaftAddr is this node's advertised raft address.
func (n *Node) RaftAddr() string { return string(n.transport.LocalAddr()) }

// Leader returns the leader's id and raft address ("" when unknown).
func (n *Node) Leader() (id, addr string) {
	a, i := n.raft.LeaderWithID()
	return string(i), string(a)
}

// LeaderHTTP returns the leader's HTTP API address as announced over gossip.
func (n *Node) LeaderHTTP() (string, error) {
	id, _ := n.Leader()
	if id == "" {
		return "", ErrNoLeader
	}
	if id == n.cfg.NodeID {
		return n.cfg.HTTPAddr, nil
	}
	if n.gossip != nil {
		if m, ok := n.gossip.Member(id); ok && m.Meta.HTTPAddr != "" {
			return m.Meta.HTTPAddr, nil
		}
	}
	return "", fmt.Errorf("%w: leader %s has no known HTTP address", ErrNoLeader, id)
}

// Gossip returns the node's gossip instance (nil when disabled).
func (n *Node) Gossip() *Gossip { return n.gossip }

// AppliedIndex, CommitIndex and LastIndex expose raft's indexes.
func (n *Node) AppliedIndex() uint64 { return n.fsm.AppliedIndex() }
func (n *Node) CommitIndex() uint64  { return n.raft.CommitIndex() }
func (n *Node) LastIndex() uint64    { return n.raft.LastIndex() }
func (n *Node) Term() uint64         { return n.raft.CurrentTerm() }

// LastContact is when a follower last heard from the leader.
func (n *Node) LastContact() time.Time { return n.raft.LastContact() }

// ElectionKicks counts the elections this server started early (failover.go):
// because the leader had been silent for the heartbeat timeout, or because
// a candidate asked for its vote while it was.
func (n *Node) ElectionKicks() (silence, vote int64) {
	return n.failover.silenceKicks.Load(), n.failover.voteKicks.Load()
}

// Stats returns raft's statistics.
func (n *Node) Stats() map[string]string { return n.raft.Stats() }

// AddNonvoter adds a server as a non-voter; the promotion loop makes it a voter
// once caught up. Adding a server that is already a member with the same
// address is a no-op, so a retried join is harmless.
func (n *Node) AddNonvoter(id, addr string) error {
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return translate(err)
	}
	for _, s := range cf.Configuration().Servers {
		if string(s.ID) == id && string(s.Address) == addr {
			return nil
		}
		if string(s.ID) == id || string(s.Address) == addr {
			// Same id at a new address, or a new id at an old address: replace.
			if err := n.raft.RemoveServer(s.ID, 0, n.cfg.ApplyTimeout).Error(); err != nil {
				return translate(err)
			}
		}
	}
	return translate(n.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(addr), 0, n.cfg.ApplyTimeout).Error())
}

// AddVoter adds (or promotes) a voter directly.
func (n *Node) AddVoter(id, addr string) error {
	return translate(n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, n.cfg.ApplyTimeout).Error())
}

// RemoveServer removes a server from the configuration.
func (n *Node) RemoveServer(id string) error {
	found := false
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return translate(err)
	}
	for _, s := range cf.Configuration().Servers {
		found = found || string(s.ID) == id
	}
	if !found {
		return fmt.Errorf("%w: %s", ErrUnknownServer, id)
	}
	return translate(n.raft.RemoveServer(raft.ServerID(id), 0, n.cfg.ApplyTimeout).Error())
}

// ErrUnknownServer is returned for a server id not in the configuration.
var ErrUnknownServer = errors.New("no such server")

// TransferLeadership hands leadership to id, or to the most up-to-date
// follower when id is empty.
func (n *Node) TransferLeadership(id string) error {
	if id == "" {
		return translate(n.raft.LeadershipTransfer().Error())
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return translate(err)
	}
	for _, s := range cf.Configuration().Servers {
		if string(s.ID) == id {
			return translate(n.raft.LeadershipTransferToServer(s.ID, s.Address).Error())
		}
	}
	return fmt.Errorf("%w: %s", ErrUnknownServer, id)
}

// Server is one member of the raft configuration.
type Server struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr,omitempty"`
	Suffrage string `json:"suffrage"` // voter or nonvoter
	Leader   bool   `json:"leader"`
	Alive    *bool  `json:"alive,omitempty"` // as gossip sees it
}

// Servers returns the raft configuration annotated with gossip data.
func (n *Node) Servers() ([]Server, error) {
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return nil, translate(err)
	}
	leader, _ := n.Leader()
	var out []Server
	for _, s := range cf.Configuration().Servers {
		sv := Server{ID: string(s.ID), RaftAddr: string(s.Address), Leader: string(s.ID) == leader,
			Suffrage: "voter"}
		if s.Suffrage == raft.Nonvoter {
			sv.Suffrage = "nonvoter"
		}
		if string(s.ID) == n.cfg.NodeID {
			sv.HTTPAddr = n.cfg.HTTPAddr
		}
		if n.gossip != nil {
			m, ok := n.gossip.Member(string(s.ID))
			if ok && sv.HTTPAddr == "" {
				sv.HTTPAddr = m.Meta.HTTPAddr
			}
			sv.Alive = &ok
		}
		out = append(out, sv)
	}
	return out, nil
}

// VerifyRead makes a linearizable read safe: it confirms this node is still the
// leader of a term in which it has committed, captures the commit index, and
// waits for the FSM to apply up to it (read-index).
func (n *Node) VerifyRead(ctx context.Context) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	for !n.leaderReady.Load() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
		if !n.IsLeader() {
			return ErrNotLeader
		}
	}
	idx := n.raft.CommitIndex()
	if err := n.raft.VerifyLeader().Error(); err != nil {
		return translate(err)
	}
	return n.WaitForApplied(ctx, n.lastFSMEntry(idx))
}

// Barrier waits until every entry before it is applied on this (leader) node.
func (n *Node) Barrier(ctx context.Context) error {
	timeout := n.cfg.ApplyTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	return translate(n.raft.Barrier(timeout).Error())
}

// WaitForLeader blocks until a leader is known (and returns its id).
func (n *Node) WaitForLeader(ctx context.Context) (string, error) {
	for {
		ch := n.leaderChanged()
		if id, _ := n.Leader(); id != "" {
			return id, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%w: %v", ErrNoLeader, ctx.Err())
		case <-ch:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitForApplied blocks until the FSM has applied index idx.
func (n *Node) WaitForApplied(ctx context.Context, idx uint64) error {
	select {
	case <-n.fsm.AppliedCh(idx):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-n.closing:
		return ErrShutdown
	}
}

// WaitForRemoval blocks until id is no longer in the configuration.
func (n *Node) WaitForRemoval(ctx context.Context, id string) error {
	for {
		srv, err := n.Servers()
		if err == nil {
			present := false
			for _, s := range srv {
				present = present || s.ID == id
			}
			if !present {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// SnapshotReader takes a snapshot now and opens it for download.
func (n *Node) SnapshotReader() (io.ReadCloser, uint64, error) {
	f := n.raft.Snapshot()
	if err := f.Error(); err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) {
		return nil, 0, translate(err)
	} else if err != nil {
		// Nothing new since the last snapshot: open the newest one.
		return n.openLatestSnapshot()
	}
	meta, rc, err := f.Open()
	if err != nil {
		return nil, 0, err
	}
	return rc, meta.Index, nil
}

func (n *Node) openLatestSnapshot() (io.ReadCloser, uint64, error) {
	snaps, err := raft.NewFileSnapshotStoreWithLogger(filepath.Join(n.cfg.DataDir, "raft"), 2, newHclog(n.log, "raft-snap"))
	if err != nil {
		return nil, 0, err
	}
	list, err := snaps.List()
	if err != nil || len(list) == 0 {
		return nil, 0, fmt.Errorf("no snapshot available: %v", err)
	}
	meta, rc, err := snaps.Open(list[0].ID)
	if err != nil {
		return nil, 0, err
	}
	return rc, meta.Index, nil
}

// Restore replaces the cluster's state with a snapshot stream (backup
// restore). The caller validates the stream first (fsm.ValidateSnapshot).
//
// The snapshot carries the source cluster's applied index, which the state
// machine takes over. Raft's own index must move past it, or the state's
// index would run backwards once writes resume (the next entry would commit
// below it): X-Raft-Index went down, WaitForApplied returned before entries
// were applied (linearizable reads answered early), and the edges' watch
// stream dropped every change up to the old index as already seen (found by
// test/: a backup restored into a fresh cluster). So the stream is first
// loaded into a scratch state machine to learn its index, raft restores it
// above that index, and a state-machine no-op then aligns the state's index
// with raft's on every server.
func (n *Node) Restore(r io.Reader, size int64) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	rs, ok := r.(io.ReadSeeker)
	if !ok {
		tmp, err := os.CreateTemp(n.cfg.DataDir, "restore-*.snap")
		if err != nil {
			return err
		}
		defer os.Remove(tmp.Name())
		defer tmp.Close()
		if size, err = io.Copy(tmp, r); err != nil {
			return err
		}
		rs = tmp
	}
	start, err := rs.Seek(0, io.SeekCurrent)
	if err != nil {
		return err
	}
	idx, err := n.snapshotIndex(io.LimitReader(rs, size))
	if err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	if _, err := rs.Seek(start, io.SeekStart); err != nil {
		return err
	}
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Size: size, Index: idx}
	if err := n.raft.Restore(meta, rs, 5*time.Minute); err != nil {
		return translate(err)
	}
	c, err := fsm.NewCommand(fsm.CmdNoop, fsm.Header{Time: time.Now().UnixNano(),
		Principal: fsm.Principal{Kind: fsm.PrincipalSystem, ID: n.cfg.NodeID, Name: "restore"}}, nil)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.ApplyTimeout)
	defer cancel()
	_, err = n.Apply(ctx, c)
	return err
}

// snapshotIndex loads a snapshot stream into a scratch state machine under
// the data dir and returns the applied index it carries.
func (n *Node) snapshotIndex(r io.Reader) (uint64, error) {
	dir, err := os.MkdirTemp(n.cfg.DataDir, "restore-probe-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	f, err := fsm.Open(dir, fsm.Options{Logger: n.log.With("component", "restore-probe")})
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if err := f.Restore(io.NopCloser(r)); err != nil {
		return 0, err
	}
	return f.AppliedIndex(), nil
}

// Shutdown stops gossip (announcing departure), raft and the stores.
func (n *Node) Shutdown() error {
	var err error
	n.shutdown.Do(func() {
		close(n.closing)
		if n.gossip != nil {
			_ = n.gossip.Leave(time.Second)
		}
		if n.raft != nil {
			err = n.raft.Shutdown().Error()
		}
		n.wg.Wait()
		n.closeStores()
	})
	return err
}
