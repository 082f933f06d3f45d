// Package faults proves AllSource Guard's fault tolerance against real
// processes on a real (if private) network: three servers run as Docker
// containers built FROM scratch from the repository, on a Docker network the
// test creates, while nemeses kill, pause, partition and slow them down.
// Clients keep issuing admin operations and reads and record a history with
// timestamps; afterwards the suite checks
//
//   - linearizability of the history with porcupine (a per-tenant model of
//     existence, status and rate limit; ambiguous writes — timeouts, 503s,
//     broken connections — count as pending forever),
//   - monotonic X-Raft-Index for stale reads per client–node session,
//   - durability: every acknowledged write is in the audit log at the index it
//     was acknowledged with, the audit hash chains verify, and every node holds
//     byte-identical state at the same applied index,
//   - availability: how long writes stop after a leader is lost, how quickly an
//     isolated leader stops accepting writes, and (with LONG=1) that a loaded
//     cluster without faults never changes leader.
//
// `go test ./...` runs the short tier (about a minute and a half); `make
// test-faults LONG=1` runs every scenario longer and prints the table that
// FAULTS.md records. The tests need Docker and root (nsenter, iptables); they
// skip with a message when those are missing, unless CI is set.
//
// Everything lives in _test.go files: nothing here is a library.
package faults
