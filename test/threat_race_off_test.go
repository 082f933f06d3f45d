//go:build !race

package test

// threatRace stretches the threat tests' waits under the race detector.
const threatRace = false
