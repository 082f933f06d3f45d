package threat

import (
	"errors"
	"fmt"
	"time"
)

// Config holds the detectors' thresholds and windows. The zero value of a
// field means its default (DESIGN.md §7 for the five documented ones).
type Config struct {
	// Brute force: BruteForceFailures failed logins for one user, or from one
	// IP across users, within BruteForceWindow.
	BruteForceFailures int
	BruteForceWindow   time.Duration
	// Credential stuffing: StuffingUsernames distinct usernames failing from
	// one IP or one API key within StuffingWindow (slow runs included).
	StuffingUsernames int
	StuffingWindow    time.Duration
	// Unusual access: an actor's baseline of hours and actions needs at least
	// BaselineEvents events spread over BaselineMinSpan; it forgets with a
	// half-life of BaselineHalfLife (a rolling window). An hour whose share
	// of the baseline is below UnusualHourShare is unusual.
	BaselineEvents   int
	BaselineMinSpan  time.Duration
	BaselineHalfLife time.Duration
	UnusualHourShare float64
	// Privilege escalation: DeniedAttempts permission_denied for one actor
	// within DeniedWindow; admin grants outside business hours
	// [BusinessStart, BusinessEnd) on weekdays in Location; a key created at
	// the creator's role ceiling within NewIPKeyWindow of a login from an IP
	// the user had not used before.
	DeniedAttempts int
	DeniedWindow   time.Duration
	BusinessStart  int // hour, 0-23
	BusinessEnd    int // hour, 1-24
	Location       *time.Location
	NewIPKeyWindow time.Duration
	// Data exfiltration: an actor's reads within ReadWindow reach
	// ExfilFactor × its baseline (the mean of its past active windows, once
	// ExfilMinWindows exist) and at least ExfilMinReads.
	ReadWindow      time.Duration
	ExfilFactor     float64
	ExfilMinWindows int
	ExfilMinReads   int
	// ReadActions are the audit actions that count as reads; an entry's
	// "count" metadata (aggregated use) counts that many.
	ReadActions []string
	// Velocity: VelocityActions actions by one actor within VelocityWindow.
	VelocityActions int
	VelocityWindow  time.Duration
	// MaxActors bounds each detector's per-actor state (an LRU); MaxIPs the
	// per-source state.
	MaxActors int
	MaxIPs    int
	// Cooldown is how long a raised anomaly (same kind, same subject) is not
	// raised again unless its level rises.
	Cooldown time.Duration
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	var c Config
	c.fill()
	return c
}

func (c *Config) fill() {
	setI := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	setD := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	setF := func(p *float64, v float64) {
		if *p == 0 {
			*p = v
		}
	}
	setI(&c.BruteForceFailures, 5)
	setD(&c.BruteForceWindow, 15*time.Minute)
	setI(&c.StuffingUsernames, 10)
	setD(&c.StuffingWindow, 6*time.Hour)
	setI(&c.BaselineEvents, 50)
	setD(&c.BaselineMinSpan, 72*time.Hour)
	setD(&c.BaselineHalfLife, 7*24*time.Hour)
	setF(&c.UnusualHourShare, 0.01)
	setI(&c.DeniedAttempts, 3)
	setD(&c.DeniedWindow, 10*time.Minute)
	setI(&c.BusinessStart, 8)
	setI(&c.BusinessEnd, 19)
	if c.Location == nil {
		c.Location = time.UTC
	}
	setD(&c.NewIPKeyWindow, 30*time.Minute)
	setD(&c.ReadWindow, 5*time.Minute)
	setF(&c.ExfilFactor, 5)
	setI(&c.ExfilMinWindows, 12)
	setI(&c.ExfilMinReads, 100)
	if c.ReadActions == nil {
		c.ReadActions = []string{"data_read", "query", "read", "export", "api_key_used", "kms_decrypt"}
	}
	setI(&c.VelocityActions, 20)
	setD(&c.VelocityWindow, 10*time.Second)
	setI(&c.MaxActors, 100_000)
	setI(&c.MaxIPs, 100_000)
	setD(&c.Cooldown, 15*time.Minute)
}

// Validate fills defaults and checks the configuration.
func (c *Config) Validate() error {
	c.fill()
	var errs []error
	pos := func(name string, ok bool) {
		if !ok {
			errs = append(errs, fmt.Errorf("threat: %s out of range", name))
		}
	}
	pos("brute-force failures", c.BruteForceFailures >= 2 && c.BruteForceWindow > 0)
	pos("stuffing usernames", c.StuffingUsernames >= 2 && c.StuffingWindow > 0)
	pos("baseline", c.BaselineEvents >= 1 && c.BaselineMinSpan >= 0 && c.BaselineHalfLife > 0 &&
		c.UnusualHourShare > 0 && c.UnusualHourShare < 1)
	pos("denied attempts", c.DeniedAttempts >= 1 && c.DeniedWindow > 0)
	pos("business hours", c.BusinessStart >= 0 && c.BusinessStart < c.BusinessEnd && c.BusinessEnd <= 24)
	pos("new-IP key window", c.NewIPKeyWindow > 0)
	pos("exfiltration", c.ReadWindow > 0 && c.ExfilFactor > 1 && c.ExfilMinWindows >= 1 && c.ExfilMinReads >= 1)
	pos("velocity", c.VelocityActions >= 2 && c.VelocityWindow > 0)
	pos("state bounds", c.MaxActors >= 16 && c.MaxIPs >= 16)
	pos("cooldown", c.Cooldown > 0)
	return errors.Join(errs...)
}

// Window is the longest look-back of the short-window detectors: what a new
// leader replays at least to warm them.
func (c *Config) Window() time.Duration {
	w := max(c.BruteForceWindow, c.StuffingWindow, c.DeniedWindow, c.NewIPKeyWindow, c.Cooldown,
		c.VelocityWindow, 2*c.ReadWindow)
	return w
}
