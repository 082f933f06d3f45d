//go:build linux

package faults

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Ports inside every container (each container has its own address, so they
// are the same everywhere).
const (
	httpPort   = 8080
	raftPort   = 7000
	gossipPort = 7946
)

// raftTimings are the raft timeouts the servers run with; zero values keep
// the binary's defaults.
type raftTimings struct {
	Heartbeat, Election, Lease time.Duration
}

func (r raftTimings) String() string {
	if r == (raftTimings{}) {
		return "defaults"
	}
	return fmt.Sprintf("heartbeat %v / election %v / lease %v", r.Heartbeat, r.Election, r.Lease)
}

// node is one server container.
type node struct {
	id        string // raft node id: s1, s2, …
	container string
	ip        netip.Addr
	dataDir   string // on the host, bind-mounted at /data
	args      []string

	// incarnation counts starts of the container; a stale-read session is
	// one client with one incarnation of one node.
	incarnation atomic.Int64
}

func (n *node) httpAddr() string { return netip.AddrPortFrom(n.ip, httpPort).String() }
func (n *node) baseURL() string  { return "http://" + n.httpAddr() }

// cluster is a set of server containers on a private network.
type cluster struct {
	t         *testing.T
	net       *network
	image     string
	nodes     []*node
	token     string // operator token (ALLSOURCE_BOOTSTRAP_TOKEN)
	joinToken string
	rootKey   string // the local KMS root key every server shares (ALLSOURCE_KMS_ROOT_KEY)
	timings   raftTimings
	http      *http.Client
	logDir    string

	// edges run when the binary has `allsource edge` (see edge_test.go);
	// extra lists their containers and the sample upstream's.
	edges     []*edgeNode
	extra     []string
	edgesNote string

	mu     sync.Mutex
	paused map[string]bool
}

func randomToken(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// startCluster starts size servers (s1 bootstraps, the others join through
// every other member) and waits until all are voters under one leader.
func startCluster(t *testing.T, size int, timings raftTimings) *cluster {
	t.Helper()
	img := buildImage(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	name := runID + "-" + strconv.FormatInt(time.Now().UnixNano()%1e6, 10)
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	c := &cluster{t: t, image: img, token: randomToken(48), joinToken: randomToken(40), timings: timings,
		rootKey: base64.StdEncoding.EncodeToString(key),
		http:    &http.Client{Timeout: 5 * time.Second}, paused: map[string]bool{}}
	c.net = createNetwork(t, ctx, name)
	base, err := os.MkdirTemp("", runID+"-data-")
	if err != nil {
		t.Fatal(err)
	}
	c.logDir = base
	t.Cleanup(func() { c.teardown(base) })
	for i := 1; i <= size; i++ {
		n := &node{id: "s" + strconv.Itoa(i), container: name + "-s" + strconv.Itoa(i), ip: c.net.host(9 + i),
			dataDir: filepath.Join(base, "s"+strconv.Itoa(i))}
		if err := os.MkdirAll(n.dataDir, 0o700); err != nil {
			t.Fatal(err)
		}
		// The image runs as 65532 (Dockerfile USER).
		if err := os.Chown(n.dataDir, 65532, 65532); err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, n)
	}
	for i, n := range c.nodes {
		// Gossip binds to every interface and is not told what to advertise:
		// this is how docker-compose.cluster.yml runs, and the regression test
		// for the advertise-0.0.0.0 bug.
		n.args = []string{"server", "-node-id", n.id, "-data-dir", "/data",
			"-http-addr", fmt.Sprintf("0.0.0.0:%d", httpPort), "-http-advertise", n.httpAddr(),
			"-raft-addr", fmt.Sprintf("0.0.0.0:%d", raftPort), "-raft-advertise", netip.AddrPortFrom(n.ip, raftPort).String(),
			"-gossip-addr", fmt.Sprintf("0.0.0.0:%d", gossipPort)}
		if timings.Heartbeat > 0 {
			n.args = append(n.args, "-heartbeat-timeout", timings.Heartbeat.String(),
				"-election-timeout", timings.Election.String(), "-leader-lease-timeout", timings.Lease.String())
		}
		if i == 0 {
			n.args = append(n.args, "-bootstrap")
		} else {
			var seeds []string
			for j, o := range c.nodes {
				if j != i {
					seeds = append(seeds, o.httpAddr())
				}
			}
			n.args = append(n.args, "-join", strings.Join(seeds, ","))
		}
		if err := c.create(ctx, n); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			// Let s1 become leader and install the operator before the others
			// ask to join, so the join is the common path (not a retry loop).
			if _, err := c.waitLeader(ctx, c.nodes[:1]); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := c.waitHealthy(ctx); err != nil {
		c.dumpLogs()
		t.Fatalf("cluster did not form: %v", err)
	}
	if ok, why := edgesAvailable(t, img, c); ok {
		if c.edges, err = c.startEdges(ctx); err != nil {
			c.dumpLogs()
			t.Fatalf("start edges: %v", err)
		}
	} else {
		c.edgesNote = why
		t.Logf("edge checks not run: %s", why)
	}
	return c
}

func (c *cluster) create(ctx context.Context, n *node) error {
	args := []string{"run", "-d", "--name", n.container, "--hostname", n.id, "--network", c.net.name,
		"--ip", n.ip.String(), "--label", labelSuite + "=1", "--label", labelOwner + "=" + ownerLabel(),
		"-v", n.dataDir + ":/data", "-e", "ALLSOURCE_BOOTSTRAP_TOKEN", "-e", "ALLSOURCE_JOIN_TOKEN", "-e", "ALLSOURCE_KMS_ROOT_KEY",
		"--log-driver", "json-file", "--log-opt", "max-size=20m", c.image}
	args = append(args, n.args...)
	_, err := dockerEnv(ctx, []string{"ALLSOURCE_BOOTSTRAP_TOKEN=" + c.token, "ALLSOURCE_JOIN_TOKEN=" + c.joinToken,
		"ALLSOURCE_KMS_ROOT_KEY=" + c.rootKey}, args...)
	if err == nil {
		n.incarnation.Add(1)
	}
	return err
}

func (c *cluster) teardown(base string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if c.t.Failed() {
		c.dumpLogs()
	}
	names := c.extra
	for _, n := range c.nodes {
		names = append(names, n.container)
	}
	for _, name := range names {
		if _, err := docker(ctx, "rm", "-f", "-v", name); err != nil {
			c.t.Logf("cleanup: %v", err)
		}
	}
	_ = os.RemoveAll(base)
}

// dumpLogs copies every container's log next to the test's other output when
// FAULTS_LOG_DIR is set, and logs the tail of each otherwise.
func (c *cluster) dumpLogs() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := os.Getenv("FAULTS_LOG_DIR")
	type logged struct{ id, container string }
	var all []logged
	for _, n := range c.nodes {
		all = append(all, logged{n.id, n.container})
	}
	for _, e := range c.edges {
		all = append(all, logged{e.id, e.container})
	}
	for _, n := range all {
		// The servers log to stderr; docker logs replays it on its own stderr.
		b, _ := exec.CommandContext(ctx, "docker", "logs", "--timestamps", n.container).CombinedOutput()
		out := string(b)
		if dir != "" {
			_ = os.MkdirAll(dir, 0o755)
			p := filepath.Join(dir, c.t.Name()+"-"+n.id+".log")
			_ = os.MkdirAll(filepath.Dir(p), 0o755)
			_ = os.WriteFile(p, []byte(out), 0o644)
			continue
		}
		lines := strings.Split(out, "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		c.t.Logf("---- last log lines of %s ----\n%s", n.id, strings.Join(lines, "\n"))
	}
}

// health is the part of GET /health the suite reads.
type health struct {
	NodeID       string `json:"node_id"`
	Role         string `json:"role"`
	Leader       string `json:"leader"`
	AppliedIndex uint64 `json:"applied_index"`
	CommitIndex  uint64 `json:"commit_index"`
	LastIndex    uint64 `json:"last_index"`
	Term         uint64 `json:"term"`
}

func (c *cluster) health(ctx context.Context, n *node) (health, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var h health
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, n.baseURL()+"/health", nil)
	resp, err := c.http.Do(req)
	if err != nil {
		return h, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return h, fmt.Errorf("%s /health: %s", n.id, resp.Status)
	}
	return h, json.NewDecoder(resp.Body).Decode(&h)
}

func (c *cluster) node(id string) *node {
	for _, n := range c.nodes {
		if n.id == id {
			return n
		}
	}
	return nil
}

// poll calls cond every interval until it reports done, ctx ends, or timeout.
func poll(ctx context.Context, timeout, interval time.Duration, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		done, err := cond()
		if done {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
			}
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// waitLeader waits until one of nodes reports itself leader and returns it.
func (c *cluster) waitLeader(ctx context.Context, among []*node) (*node, error) {
	var leader *node
	err := poll(ctx, 60*time.Second, 25*time.Millisecond, func() (bool, error) {
		for _, n := range among {
			if h, err := c.health(ctx, n); err == nil && h.Role == "leader" {
				leader = n
				return true, nil
			}
		}
		return false, nil
	})
	return leader, err
}

// leader returns the node that is leader now, as the nodes agree: one node
// says it leads and every reachable node names it.
func (c *cluster) leader(ctx context.Context) (*node, error) {
	var leader *node
	err := poll(ctx, 60*time.Second, 25*time.Millisecond, func() (bool, error) {
		var id string
		for _, n := range c.nodes {
			h, err := c.health(ctx, n)
			if err != nil {
				continue
			}
			if h.Leader == "" || (id != "" && h.Leader != id) {
				return false, nil
			}
			id = h.Leader
		}
		leader = c.node(id)
		if leader == nil {
			return false, nil
		}
		h, err := c.health(ctx, leader)
		return err == nil && h.Role == "leader", err
	})
	return leader, err
}

// member is one entry of GET /v1/cluster/members.
type member struct {
	ID       string `json:"id"`
	Suffrage string `json:"suffrage"`
	Leader   bool   `json:"leader"`
	Alive    *bool  `json:"alive"`
}

// waitHealthy waits until every node is a voter, alive in gossip, and all
// agree on one leader.
func (c *cluster) waitHealthy(ctx context.Context) error {
	return poll(ctx, 90*time.Second, 100*time.Millisecond, func() (bool, error) {
		l, err := c.leader(ctx)
		if err != nil {
			return false, err
		}
		var body struct {
			Servers []member `json:"servers"`
		}
		if err := c.getJSON(ctx, l, "/v1/cluster/members", &body); err != nil {
			return false, err
		}
		if len(body.Servers) != len(c.nodes) {
			return false, fmt.Errorf("%d members, want %d", len(body.Servers), len(c.nodes))
		}
		for _, m := range body.Servers {
			if m.Suffrage != "voter" || m.Alive == nil || !*m.Alive {
				return false, fmt.Errorf("member %s: suffrage %s, alive %v", m.ID, m.Suffrage, m.Alive)
			}
		}
		return true, nil
	})
}

// getJSON GETs path on n with the operator token and decodes the answer.
func (c *cluster) getJSON(ctx context.Context, n *node, path string, out any) error {
	_, body, _, err := c.get(ctx, n, path)
	if err != nil {
		return err
	}
	return json.Unmarshal(body, out)
}

// get GETs path on n with the operator token; non-2xx answers are errors.
func (c *cluster) get(ctx context.Context, n *node, path string) (int, []byte, http.Header, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, n.baseURL()+path, nil)
	req.Header.Set("Authorization", "Bearer "+c.token)
	// A fixed request id: error bodies echo it, and nodes' answers are compared byte for byte.
	req.Header.Set("X-Request-ID", "faults-get")
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode/100 != 2 {
		err = fmt.Errorf("GET %s on %s: %s: %s", path, n.id, resp.Status, strings.TrimSpace(string(body)))
	}
	return resp.StatusCode, body, resp.Header, err
}

// containerPID is the host pid of the container's init (for nsenter).
func (c *cluster) containerPID(ctx context.Context, n *node) (int, error) {
	out, err := docker(ctx, "inspect", "-f", "{{.State.Pid}}", n.container)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(out)
	if err != nil || pid == 0 {
		return 0, fmt.Errorf("%s is not running (pid %q)", n.id, out)
	}
	return pid, nil
}

// kill sends SIGKILL to the node's process (kill -9) and waits until the
// container has stopped.
func (c *cluster) kill(ctx context.Context, n *node) error {
	if _, err := docker(ctx, "kill", "-s", "KILL", n.container); err != nil {
		return err
	}
	return poll(ctx, 30*time.Second, 20*time.Millisecond, func() (bool, error) {
		out, err := docker(ctx, "inspect", "-f", "{{.State.Running}}", n.container)
		return err == nil && out == "false", err
	})
}

// start restarts a stopped container with its data directory (same address,
// same arguments: a restarted server resumes from its raft log).
func (c *cluster) start(ctx context.Context, n *node) error {
	if _, err := docker(ctx, "start", n.container); err != nil {
		return err
	}
	n.incarnation.Add(1)
	return nil
}

// pause freezes every process of the container (cgroup freezer); the process
// does not notice, its peers see a silent node. unpause thaws it.
func (c *cluster) pause(ctx context.Context, n *node) error {
	_, err := docker(ctx, "pause", n.container)
	if err == nil {
		c.mu.Lock()
		c.paused[n.id] = true
		c.mu.Unlock()
	}
	return err
}

func (c *cluster) unpause(ctx context.Context, n *node) error {
	c.mu.Lock()
	p := c.paused[n.id]
	delete(c.paused, n.id)
	c.mu.Unlock()
	if !p {
		return nil
	}
	_, err := docker(ctx, "unpause", n.container)
	return err
}

// others returns every node but n.
func (c *cluster) others(n *node) []*node {
	var out []*node
	for _, o := range c.nodes {
		if o != n {
			out = append(out, o)
		}
	}
	return out
}

// waitConverged waits until every node has applied the same index as the
// leader has committed and no new entries arrive for a moment, and returns
// that index.
func (c *cluster) waitConverged(ctx context.Context, timeout time.Duration) (uint64, error) {
	var idx, prev uint64
	stable := 0
	err := poll(ctx, timeout, 150*time.Millisecond, func() (bool, error) {
		var first *health
		for _, n := range c.nodes {
			h, err := c.health(ctx, n)
			if err != nil {
				stable = 0
				return false, err
			}
			// The FSM's applied index may stay below the commit index: raft
			// does not hand it no-op and barrier entries. Converged means
			// every node has the same log, commits all of it, and has
			// applied the same state.
			if h.Leader == "" || h.CommitIndex != h.LastIndex {
				stable = 0
				return false, fmt.Errorf("%s: leader %q, commit %d, last %d", n.id, h.Leader, h.CommitIndex, h.LastIndex)
			}
			if first == nil {
				first = &h
			} else if h.AppliedIndex != first.AppliedIndex || h.LastIndex != first.LastIndex || h.Leader != first.Leader {
				stable = 0
				return false, fmt.Errorf("%s applied %d last %d (leader %s), %s applied %d last %d (leader %s)", first.NodeID,
					first.AppliedIndex, first.LastIndex, first.Leader, n.id, h.AppliedIndex, h.LastIndex, h.Leader)
			}
		}
		idx = first.AppliedIndex
		if idx == prev {
			stable++
		} else {
			stable = 0
		}
		prev = idx
		return stable >= 2, nil
	})
	return idx, err
}
