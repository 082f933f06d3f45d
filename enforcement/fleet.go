package enforcement

import (
	"encoding/binary"
	"errors"
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/allsource/guard/internal/tally"
)

// Member is one live member of the gossip membership.
type Member struct {
	Name     string
	Role     string // "server" or "edge"
	HTTPAddr string
}

// Membership is what an edge needs of gossip (the wiring adapts
// cluster.Gossip to it): who is alive, and best-effort messages to one
// member. Messages from peers reach Edge.OnGossipMessage.
type Membership interface {
	Members() []Member
	SendTo(name string, msg []byte) error
}

// FleetConfig tunes fleet-wide rate limiting.
type FleetConfig struct {
	// Interval between demand reports (default 250 ms).
	Interval time.Duration
	// Tau is the demand meter's time constant (default 2 s).
	Tau time.Duration
	// StaleAfter drops a peer that has not reported for this long (default
	// 4 × Interval, at least 1 s).
	StaleAfter time.Duration
	Share      ShareConfig
}

func (c FleetConfig) withDefaults() FleetConfig {
	if c.Interval <= 0 {
		c.Interval = 250 * time.Millisecond
	}
	if c.Tau <= 0 {
		c.Tau = 2 * time.Second
	}
	if c.StaleAfter <= 0 {
		c.StaleAfter = max(4*c.Interval, time.Second)
	}
	return c
}

// Fleet makes a tenant's limit fleet-wide: every Interval it folds the demand
// this edge saw (DemandMeter), sends it to every other edge, and sets this
// edge's share of each tenant's budget (FleetShares → Buckets.SetShare) from
// its own demand and the peers' latest reports. A lone edge gets the whole
// budget.
type Fleet struct {
	node    string
	cfg     FleetConfig
	meter   *DemandMeter
	peers   *PeerTable
	buckets *Buckets
	budget  func(tenant string) float64
	members atomic.Pointer[membershipBox]
	seq     atomic.Uint64

	mu      sync.Mutex
	partial map[string]*partialReport
	shared  map[string]bool // tenants given a non-default share last tick
	sent    atomic.Uint64
	recv    atomic.Uint64
}

type membershipBox struct{ m Membership }

type partialReport struct {
	seq    uint64
	parts  int
	got    map[int]bool
	demand map[string]float64
}

// NewFleet returns a fleet coordinator for node that reads this edge's
// demand from counts. budget gives a tenant's fleet-wide budget in tokens per
// second (≤ 0: unknown).
func NewFleet(node string, cfg FleetConfig, clock Clock, counts *tally.Meter, buckets *Buckets, budget func(string) float64) *Fleet {
	cfg = cfg.withDefaults()
	if clock == nil {
		clock = SystemClock
	}
	return &Fleet{node: node, cfg: cfg, meter: NewDemandMeter(counts, clock, cfg.Tau), peers: NewPeerTable(clock, cfg.StaleAfter),
		buckets: buckets, budget: budget, partial: map[string]*partialReport{}, shared: map[string]bool{}}
}

// SetMembership installs the gossip membership (nil: a lone edge).
func (f *Fleet) SetMembership(m Membership) { f.members.Store(&membershipBox{m: m}) }

// Interval is the reporting interval.
func (f *Fleet) Interval() time.Duration { return f.cfg.Interval }

// FleetStatus describes fleet limiting for /health.
type FleetStatus struct {
	Peers        int    `json:"peers"`
	ReportsSent  uint64 `json:"reports_sent"`
	ReportsRecvd uint64 `json:"reports_received"`
}

// Status returns the number of live peers and report counters.
func (f *Fleet) Status() FleetStatus {
	return FleetStatus{Peers: len(f.peers.Live()), ReportsSent: f.sent.Load(), ReportsRecvd: f.recv.Load()}
}

// Tick recomputes the shares and sends this edge's demand to its peers.
func (f *Fleet) Tick() {
	self := f.meter.Tick()
	live := f.peers.Live()
	shares, def := FleetShares(self, live, f.budget, f.cfg.Share)
	_ = f.buckets.SetDefaultShare(def)
	f.mu.Lock()
	for t, s := range shares {
		_ = f.buckets.SetShare(t, s)
	}
	for t := range f.shared {
		if _, ok := shares[t]; !ok {
			_ = f.buckets.SetShare(t, def)
		}
	}
	clear(f.shared)
	for t := range shares {
		f.shared[t] = true
	}
	f.mu.Unlock()
	box := f.members.Load()
	if box == nil || box.m == nil {
		return
	}
	seq := f.seq.Add(1)
	msgs := encodeDemand(f.node, seq, self)
	for _, m := range box.m.Members() {
		if m.Role != "edge" || m.Name == f.node {
			continue
		}
		for _, msg := range msgs {
			if box.m.SendTo(m.Name, msg) == nil {
				f.sent.Add(1)
			}
		}
	}
}

// OnMessage takes a gossip message from a peer.
func (f *Fleet) OnMessage(b []byte) {
	node, seq, part, parts, demand, err := decodeDemand(b)
	if err != nil || node == f.node {
		return
	}
	f.recv.Add(1)
	if parts == 1 {
		f.peers.Observe(node, seq, demand)
		return
	}
	f.mu.Lock()
	p := f.partial[node]
	if p == nil || p.seq != seq {
		if p != nil && p.seq > seq {
			f.mu.Unlock()
			return // an old report's late part
		}
		p = &partialReport{seq: seq, parts: parts, got: map[int]bool{}, demand: map[string]float64{}}
		f.partial[node] = p
	}
	if !p.got[part] {
		p.got[part] = true
		for t, d := range demand {
			p.demand[t] = d
		}
	}
	complete := len(p.got) == p.parts
	if complete {
		delete(f.partial, node)
	}
	f.mu.Unlock()
	if complete {
		f.peers.Observe(node, seq, p.demand)
	}
}

// ---- demand report encoding ----
//
//	"AD\x01" uvarint(len node) node uvarint(seq) byte(part) byte(parts)
//	repeated: uvarint(len tenant) tenant float32-LE(demand)
//
// A report larger than one UDP datagram is split into parts (at most 255).

const maxDemandMsg = 1200

var demandMagic = []byte("AD\x01")

func encodeDemand(node string, seq uint64, demand map[string]float64) [][]byte {
	tenants := make([]string, 0, len(demand))
	for t := range demand {
		tenants = append(tenants, t)
	}
	// Largest demand first: if a report had to be cut, the tenants that
	// matter most would still be in it.
	sort.Slice(tenants, func(i, j int) bool { return demand[tenants[i]] > demand[tenants[j]] })
	head := func(part int) []byte {
		b := append([]byte(nil), demandMagic...)
		b = binary.AppendUvarint(b, uint64(len(node)))
		b = append(b, node...)
		b = binary.AppendUvarint(b, seq)
		return append(b, byte(part), 0)
	}
	var msgs [][]byte
	cur := head(0)
	n := 0
	for _, t := range tenants {
		if len(cur)+binary.MaxVarintLen16+len(t)+4 > maxDemandMsg && n > 0 {
			msgs = append(msgs, cur)
			if len(msgs) == 255 {
				break
			}
			cur, n = head(len(msgs)), 0
		}
		cur = binary.AppendUvarint(cur, uint64(len(t)))
		cur = append(cur, t...)
		cur = binary.LittleEndian.AppendUint32(cur, math.Float32bits(float32(demand[t])))
		n++
	}
	if len(msgs) < 255 {
		msgs = append(msgs, cur)
	}
	partsAt := len(head(0)) - 1 // every part has the same header length
	for _, m := range msgs {
		m[partsAt] = byte(len(msgs))
	}
	return msgs
}

var errDemandMsg = errors.New("not a demand report")

func decodeDemand(b []byte) (node string, seq uint64, part, parts int, demand map[string]float64, err error) {
	if len(b) < len(demandMagic) || string(b[:len(demandMagic)]) != string(demandMagic) {
		return "", 0, 0, 0, nil, errDemandMsg
	}
	b = b[len(demandMagic):]
	str := func() (string, bool) {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > 256 || uint64(len(b)-k) < n {
			return "", false
		}
		s := string(b[k : k+int(n)])
		b = b[k+int(n):]
		return s, true
	}
	var ok bool
	if node, ok = str(); !ok || node == "" {
		return "", 0, 0, 0, nil, errDemandMsg
	}
	var k int
	if seq, k = binary.Uvarint(b); k <= 0 || len(b) < k+2 {
		return "", 0, 0, 0, nil, errDemandMsg
	}
	part, parts = int(b[k]), int(b[k+1])
	b = b[k+2:]
	if parts == 0 || part >= parts {
		return "", 0, 0, 0, nil, errDemandMsg
	}
	demand = map[string]float64{}
	for len(b) > 0 {
		t, ok := str()
		if !ok || len(b) < 4 {
			return "", 0, 0, 0, nil, errDemandMsg
		}
		d := float64(math.Float32frombits(binary.LittleEndian.Uint32(b)))
		b = b[4:]
		demand[t] = d
	}
	return node, seq, part, parts, demand, nil
}
