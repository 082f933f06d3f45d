//go:build pkcs11

package kms

import "testing"

// SoftHSMForTest prepares the SoftHSM2 test token (pkcs11_test.go) for the
// external test package and returns the module, token label and user PIN.
func SoftHSMForTest(t testing.TB) (library, token, pin string) {
	requireSoftHSM(t)
	return softHSMLibrary, softHSMToken, softHSMPIN
}
