//go:build !linux

package kms

import "os/exec"

// dieWithTest: only Linux can tie a child's life to its parent; elsewhere
// the emulator is stopped by TestMain's cleanup alone.
func dieWithTest(cmd *exec.Cmd) {}
