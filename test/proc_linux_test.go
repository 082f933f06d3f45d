//go:build linux

package test

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes the kernel kill a server process if the test binary
// dies first (a -timeout panic, a kill), so no server outlives its test.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
