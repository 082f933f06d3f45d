//go:build unix

package threat

import (
	"runtime"
	"sync"
	"syscall"
	"time"
)

// CPUSampler measures this process's CPU utilisation between two samples,
// as a fraction of the CPUs Go may use (getrusage: user + system time).
type CPUSampler struct {
	mu       sync.Mutex
	lastWall time.Time
	lastCPU  time.Duration
	last     float64
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Sample returns the utilisation in [0, 1] since the previous call (the
// previous figure if called again within 100 ms; 0 on the first call).
func (s *CPUSampler) Sample() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	now, cpu := time.Now(), processCPU()
	if s.lastWall.IsZero() {
		s.lastWall, s.lastCPU = now, cpu
		return 0
	}
	wall := now.Sub(s.lastWall)
	if wall < 100*time.Millisecond {
		return s.last
	}
	u := float64(cpu-s.lastCPU) / (float64(wall) * float64(runtime.GOMAXPROCS(0)))
	s.last = max(0, min(1, u))
	s.lastWall, s.lastCPU = now, cpu
	return s.last
}
