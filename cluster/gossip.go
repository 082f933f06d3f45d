package cluster

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// NodeMeta is what a process announces about itself over gossip.
type NodeMeta struct {
	Role     string `json:"role"` // "server" or "edge"
	HTTPAddr string `json:"http"`
	RaftAddr string `json:"raft,omitempty"`
}

// GossipMember is one live member seen through gossip.
type GossipMember struct {
	Name   string   `json:"name"`
	Addr   string   `json:"gossip_addr"`
	Meta   NodeMeta `json:"meta"`
	Status string   `json:"status"`
}

// GossipConfig configures membership gossip (hashicorp/memberlist).
type GossipConfig struct {
	Name      string
	Bind      string // host:port
	Advertise string // host:port; defaults to Bind
	// JoinToken derives the gossip encryption key: a process without the token
	// can neither read nor inject gossip.
	JoinToken string
	Meta      NodeMeta
	Logger    *slog.Logger
	// OnMessage receives user messages from peers (fleet rate-limit demand).
	OnMessage func([]byte)
	// Broadcasts returns the messages to piggyback on the next gossip round.
	Broadcasts func(overhead, limit int) [][]byte
	// Fast shortens probe and gossip intervals (tests and small clusters).
	Fast bool
}

// Gossip is a memberlist instance with encryption keyed by the join token.
type Gossip struct {
	ml      *memberlist.Memberlist
	cfg     GossipConfig
	members *memberTable
}

// memberTable is this process's copy of the live members, kept by
// memberlist's event delegate. memberlist's Members() hands out pointers to
// its own node records, which its packet handler rewrites (address, metadata)
// under a lock the caller cannot take, so reading them raced (found by the
// race detector in TestEdgeFleetLimit). The delegate's callbacks run under
// that lock, so copying there is safe; metadata is decoded once per change
// instead of on every lookup.
type memberTable struct {
	mu sync.RWMutex
	m  map[string]GossipMember
}

func (t *memberTable) put(n *memberlist.Node) {
	m := GossipMember{Name: n.Name, Addr: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))), Status: "alive"}
	_ = json.Unmarshal(n.Meta, &m.Meta) // a peer's unreadable metadata leaves it without role or addresses
	t.mu.Lock()
	t.m[m.Name] = m
	t.mu.Unlock()
}

func (t *memberTable) NotifyJoin(n *memberlist.Node)   { t.put(n) }
func (t *memberTable) NotifyUpdate(n *memberlist.Node) { t.put(n) }
func (t *memberTable) NotifyLeave(n *memberlist.Node) {
	t.mu.Lock()
	delete(t.m, n.Name)
	t.mu.Unlock()
}

// GossipKey derives the 32-byte AES-256 gossip key from a join token.
func GossipKey(joinToken string) []byte {
	sum := sha256.Sum256([]byte("allsource-gossip-v1\x00" + joinToken))
	return sum[:]
}

type gossipDelegate struct {
	meta []byte
	cfg  *GossipConfig
}

func (d *gossipDelegate) NodeMeta(limit int) []byte {
	if len(d.meta) > limit {
		return nil
	}
	return d.meta
}
func (d *gossipDelegate) NotifyMsg(b []byte) {
	if d.cfg.OnMessage != nil {
		d.cfg.OnMessage(append([]byte(nil), b...))
	}
}
func (d *gossipDelegate) GetBroadcasts(overhead, limit int) [][]byte {
	if d.cfg.Broadcasts != nil {
		return d.cfg.Broadcasts(overhead, limit)
	}
	return nil
}
func (d *gossipDelegate) LocalState(bool) []byte              { return nil }
func (d *gossipDelegate) MergeRemoteState(buf []byte, _ bool) {}

// NewGossip starts gossip on cfg.Bind.
func NewGossip(cfg GossipConfig) (*Gossip, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	host, port, err := splitHostPort(cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("gossip address: %w", err)
	}
	mc := memberlist.DefaultLANConfig()
	if cfg.Fast {
		mc = memberlist.DefaultLocalConfig()
		mc.ProbeInterval = 500 * time.Millisecond
		mc.GossipInterval = 100 * time.Millisecond
	}
	mc.Name = cfg.Name
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertiseAddr, mc.AdvertisePort = host, port
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		// Bound to every interface: let memberlist advertise this host's
		// private address. Advertising 0.0.0.0 made joining peers dial
		// themselves, so gossip (and with it leader forwarding and promotion)
		// never formed in containers (found by test/faults).
		mc.AdvertiseAddr = ""
	}
	if cfg.Advertise != "" {
		if mc.AdvertiseAddr, mc.AdvertisePort, err = splitHostPort(cfg.Advertise); err != nil {
			return nil, fmt.Errorf("gossip advertise address: %w", err)
		}
	}
	if cfg.JoinToken != "" {
		mc.SecretKey = GossipKey(cfg.JoinToken)
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	}
	meta, err := json.Marshal(cfg.Meta)
	if err != nil {
		return nil, err
	}
	mc.Delegate = &gossipDelegate{meta: meta, cfg: &cfg}
	table := &memberTable{m: make(map[string]GossipMember)}
	mc.Events = table
	mc.Logger = slog.NewLogLogger(cfg.Logger.With("component", "gossip").Handler(), slog.LevelDebug)
	mc.LogOutput = nil
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("start gossip: %w", err)
	}
	return &Gossip{ml: ml, cfg: cfg, members: table}, nil
}

// Join contacts the given gossip addresses; it succeeds if any answers.
func (g *Gossip) Join(addrs []string) (int, error) { return g.ml.Join(addrs) }

// Addr is the advertised gossip address.
func (g *Gossip) Addr() string {
	// From the member table (memberlist announced this node to it at
	// Create): LocalNode's *Node is rewritten by UpdateNode and refutations
	// under memberlist's lock, like every other node record.
	m, _ := g.Member(g.cfg.Name)
	return m.Addr
}

// Members lists live members with their metadata, ordered by name.
func (g *Gossip) Members() []GossipMember {
	g.members.mu.RLock()
	out := make([]GossipMember, 0, len(g.members.m))
	for _, m := range g.members.m {
		out = append(out, m)
	}
	g.members.mu.RUnlock()
	slices.SortFunc(out, func(a, b GossipMember) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Member returns the live member with the given name (the leader's HTTP
// address is looked up on every forwarded request).
func (g *Gossip) Member(name string) (GossipMember, bool) {
	g.members.mu.RLock()
	m, ok := g.members.m[name]
	g.members.mu.RUnlock()
	return m, ok
}

// SendTo sends a best-effort user message to one member.
func (g *Gossip) SendTo(name string, msg []byte) error {
	m, ok := g.Member(name)
	if !ok {
		return fmt.Errorf("no gossip member %q", name)
	}
	return g.ml.SendToAddress(memberlist.Address{Addr: m.Addr, Name: m.Name}, msg)
}

// NumMembers is the number of live members (including this one).
func (g *Gossip) NumMembers() int {
	g.members.mu.RLock()
	defer g.members.mu.RUnlock()
	return len(g.members.m)
}

// Leave announces departure and stops gossip.
func (g *Gossip) Leave(timeout time.Duration) error {
	err := g.ml.Leave(timeout)
	if serr := g.ml.Shutdown(); err == nil {
		err = serr
	}
	return err
}

func splitHostPort(addr string) (string, int, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("bad port in %q", addr)
	}
	if h == "" {
		h = "0.0.0.0"
	}
	return h, port, nil
}
