// Package test holds AllSource Guard's system tests: in-process clusters of
// real servers (internal/server, exactly what the binary runs) talking over
// loopback TCP, multi-process tests against the built `allsource` binary, and
// the raft write benchmark that compares the replicated state machine with a
// bare hashicorp/raft cluster on the same machine.
//
// Everything lives in _test.go files: nothing here is a library. Tests wait
// on conditions with waitFor, never on sleeps; timeouts are multiplied when
// CI is set or the race detector is on.
package test
