//go:build linux

package faults

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Packet delay and loss without tc netem. The kernels this suite runs on may
// be built without sch_netem (this project's CI VMs are), so the delay
// nemesis uses netfilter instead: an iptables rule in the container's network
// namespace sends every outgoing packet to an NFQUEUE, and this process — with
// a netlink socket opened inside that namespace — hands each packet back after
// its delay (in order, so nothing is reordered) or drops it with the loss
// probability. The rule carries --queue-bypass and the queue is fail-open, so
// if this process stops listening, packets flow again.

const (
	nfnlSubsysQueue   = 3
	nfqnlMsgPacket    = 0
	nfqnlMsgVerdict   = 1
	nfqnlMsgConfig    = 2
	nfqaPacketHdr     = 1
	nfqaVerdictHdr    = 2
	nfqaCfgCmd        = 1
	nfqaCfgParams     = 2
	nfqaCfgQueueMax   = 3
	nfqaCfgMask       = 4
	nfqaCfgFlags      = 5
	nfqnlCfgCmdBind   = 1
	nfqnlCopyMeta     = 1
	nfqaCfgFFailOpen  = 1
	nfAccept          = 1
	nfDrop            = 0
	nlmsgHdrLen       = 16
	nfgenHdrLen       = 4
	nfqueueMaxPackets = 16384
)

// delayer holds packets of one NFQUEUE for a while.
type delayer struct {
	fd     int
	queue  uint16
	delay  time.Duration
	jitter time.Duration
	loss   float64

	mu      sync.Mutex
	pending []verdict
	wake    chan struct{}
	stop    chan struct{}
	done    sync.WaitGroup
	seq     uint32
	flushed bool
}

type verdict struct {
	id     uint32
	accept bool
	at     time.Time
}

// openInNetns runs fn on an OS thread that has joined the network namespace
// of process pid; sockets fn opens stay bound to that namespace. The thread
// is never handed back to the Go scheduler (it exits with the goroutine).
func openInNetns(pid int, fn func() (int, error)) (int, error) {
	type res struct {
		fd  int
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread() // no Unlock: the thread dies with this goroutine
		ns, err := unix.Open(fmt.Sprintf("/proc/%d/ns/net", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- res{-1, fmt.Errorf("open netns of %d: %w", pid, err)}
			return
		}
		defer unix.Close(ns)
		if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
			ch <- res{-1, fmt.Errorf("setns: %w", err)}
			return
		}
		fd, err := fn()
		ch <- res{fd, err}
	}()
	r := <-ch
	return r.fd, r.err
}

// newDelayer binds NFQUEUE queue in the network namespace of pid.
func newDelayer(pid int, queue uint16, delay, jitter time.Duration, loss float64) (*delayer, error) {
	fd, err := openInNetns(pid, func() (int, error) {
		return unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	})
	if err != nil {
		return nil, err
	}
	d := &delayer{fd: fd, queue: queue, delay: delay, jitter: jitter, loss: loss, wake: make(chan struct{}, 1),
		stop: make(chan struct{})}
	if err := d.configure(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	d.done.Add(2)
	go d.readLoop()
	go d.verdictLoop()
	return d, nil
}

func (d *delayer) configure() error {
	_ = unix.SetsockoptInt(d.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20)
	_ = unix.SetsockoptInt(d.fd, unix.SOL_NETLINK, unix.NETLINK_NO_ENOBUFS, 1)
	if err := unix.Bind(d.fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	// Bind the queue.
	cmd := []byte{nfqnlCfgCmdBind, 0, 0, 0} // command, pad, pf (ignored since Linux 3.8)
	if err := d.request(nfqnlMsgConfig, attr(nfqaCfgCmd, cmd)); err != nil {
		return fmt.Errorf("bind queue %d: %w", d.queue, err)
	}
	// Copy metadata only (we need the packet id, not the payload), a long
	// queue, and fail open when it is full.
	params := make([]byte, 5)
	binary.BigEndian.PutUint32(params, 0)
	params[4] = nfqnlCopyMeta
	maxLen := binary.BigEndian.AppendUint32(nil, nfqueueMaxPackets)
	flags := binary.BigEndian.AppendUint32(nil, nfqaCfgFFailOpen)
	msg := append(attr(nfqaCfgParams, params), attr(nfqaCfgQueueMax, maxLen)...)
	msg = append(msg, attr(nfqaCfgFlags, flags)...)
	msg = append(msg, attr(nfqaCfgMask, flags)...)
	if err := d.request(nfqnlMsgConfig, msg); err != nil {
		return fmt.Errorf("configure queue %d: %w", d.queue, err)
	}
	// Wake the reader now and then so close can stop it.
	tv := unix.NsecToTimeval(int64(200 * time.Millisecond))
	return unix.SetsockoptTimeval(d.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
}

func attr(typ uint16, payload []byte) []byte {
	l := 4 + len(payload)
	b := make([]byte, (l+3)&^3)
	binary.NativeEndian.PutUint16(b[0:], uint16(l))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[4:], payload)
	return b
}

func (d *delayer) message(msgType uint16, flags uint16, attrs []byte) []byte {
	d.seq++
	b := make([]byte, nlmsgHdrLen+nfgenHdrLen+len(attrs))
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], nfnlSubsysQueue<<8|msgType)
	binary.NativeEndian.PutUint16(b[6:], flags)
	binary.NativeEndian.PutUint32(b[8:], d.seq)
	b[16] = unix.AF_UNSPEC
	b[17] = 0 // NFNETLINK_V0
	binary.BigEndian.PutUint16(b[18:], d.queue)
	copy(b[20:], attrs)
	return b
}

// request sends a config message and waits for the kernel's ack.
func (d *delayer) request(msgType uint16, attrs []byte) error {
	m := d.message(msgType, unix.NLM_F_REQUEST|unix.NLM_F_ACK, attrs)
	if err := unix.Sendto(d.fd, m, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 8192)
	for {
		n, _, err := unix.Recvfrom(d.fd, buf, 0)
		if err != nil {
			return err
		}
		for b := buf[:n]; len(b) >= nlmsgHdrLen; {
			l := int(binary.NativeEndian.Uint32(b[0:]))
			typ := binary.NativeEndian.Uint16(b[4:])
			if l < nlmsgHdrLen || l > len(b) {
				return errors.New("short netlink message")
			}
			if typ == unix.NLMSG_ERROR && l >= nlmsgHdrLen+4 {
				if code := int32(binary.NativeEndian.Uint32(b[16:])); code != 0 {
					return unix.Errno(-code)
				}
				return nil
			}
			b = b[(l+3)&^3:]
		}
	}
}

func (d *delayer) readLoop() {
	defer d.done.Done()
	buf := make([]byte, 1<<20)
	for {
		n, _, err := unix.Recvfrom(d.fd, buf, 0)
		if err != nil {
			select {
			case <-d.stop:
				return
			default:
			}
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN) {
				continue
			}
			return
		}
		now := time.Now()
		for b := buf[:n]; len(b) >= nlmsgHdrLen; {
			l := int(binary.NativeEndian.Uint32(b[0:]))
			if l < nlmsgHdrLen || l > len(b) {
				break
			}
			typ := binary.NativeEndian.Uint16(b[4:])
			if typ == nfnlSubsysQueue<<8|nfqnlMsgPacket {
				if id, ok := packetID(b[nlmsgHdrLen+nfgenHdrLen : l]); ok {
					d.enqueue(id, now)
				}
			}
			b = b[(l+3)&^3:]
		}
	}
}

func packetID(attrs []byte) (uint32, bool) {
	for len(attrs) >= 4 {
		l := int(binary.NativeEndian.Uint16(attrs[0:]))
		typ := binary.NativeEndian.Uint16(attrs[2:]) & 0x3fff
		if l < 4 || l > len(attrs) {
			return 0, false
		}
		if typ == nfqaPacketHdr && l >= 8 {
			return binary.BigEndian.Uint32(attrs[4:]), true
		}
		attrs = attrs[(l+3)&^3:]
	}
	return 0, false
}

func (d *delayer) enqueue(id uint32, now time.Time) {
	v := verdict{id: id, accept: d.loss == 0 || mrand.Float64() >= d.loss, at: now.Add(d.delay)}
	if d.jitter > 0 {
		v.at = v.at.Add(time.Duration(mrand.Int64N(int64(2*d.jitter))) - d.jitter)
	}
	d.mu.Lock()
	if n := len(d.pending); n > 0 && v.at.Before(d.pending[n-1].at) {
		v.at = d.pending[n-1].at // keep order: no reordering
	}
	if d.flushed {
		v.at = now
	}
	d.pending = append(d.pending, v)
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *delayer) verdictLoop() {
	defer d.done.Done()
	for {
		d.mu.Lock()
		var due []verdict
		now := time.Now()
		i := 0
		for ; i < len(d.pending) && !d.pending[i].at.After(now); i++ {
		}
		due = append(due, d.pending[:i]...)
		d.pending = d.pending[i:]
		var next time.Duration = time.Hour
		if len(d.pending) > 0 {
			next = time.Until(d.pending[0].at)
		}
		d.mu.Unlock()
		for _, v := range due {
			code := uint32(nfDrop)
			if v.accept {
				code = nfAccept
			}
			p := binary.BigEndian.AppendUint32(nil, code)
			p = binary.BigEndian.AppendUint32(p, v.id)
			_ = unix.Sendto(d.fd, d.message(nfqnlMsgVerdict, unix.NLM_F_REQUEST, attr(nfqaVerdictHdr, p)), 0,
				&unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		}
		select {
		case <-d.stop:
			return
		case <-d.wake:
		case <-time.After(next):
		}
	}
}

// close releases every held packet at once (after the iptables rule is gone,
// nothing new arrives) and unbinds the queue.
func (d *delayer) close(ctx context.Context) {
	d.mu.Lock()
	d.flushed = true
	for i := range d.pending {
		d.pending[i].at = time.Time{}
	}
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
	_ = poll(ctx, 5*time.Second, 5*time.Millisecond, func() (bool, error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		return len(d.pending) == 0, nil
	})
	close(d.stop)
	d.done.Wait()
	unix.Close(d.fd)
}
