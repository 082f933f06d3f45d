package kms

import (
	"os/exec"
	"syscall"
)

// dieWithTest makes the kernel kill an emulator started by the tests if the
// test binary itself dies (panic, timeout), so none is left behind.
func dieWithTest(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
