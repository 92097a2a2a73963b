package lab

import (
	"crypto/rand"
	"fmt"
	"strings"
)

// maxIfNameLen is the longest interface name the kernel accepts (IFNAMSIZ-1).
const maxIfNameLen = 15

// newRunID returns a short random id of lowercase letters and digits.
func newRunID() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("lab: reading random bytes: %v", err))
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// runPrefix is the prefix of every namespace name of one run, e.g. "flab12c-".
func runPrefix(runID string) string {
	return "fl" + runID + "-"
}

// netnsName joins the run prefix and the parts, e.g. "fl<id>-n1-p1".
func netnsName(runID string, parts ...string) string {
	return runPrefix(runID) + strings.Join(parts, "-")
}

// ifName returns name if it is a valid interface name length, else fallback.
func ifName(name, fallback string) string {
	if len(name) <= maxIfNameLen {
		return name
	}
	return fallback
}
