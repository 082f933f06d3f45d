//go:build race

package test

// raceEnabled stretches timeouts: the race detector slows raft and HTTP
// several times over.
const raceEnabled = true
