package wireguard

import (
	"net"
	"testing"
)

// TestOpSniffer checks that a UAPI client's operation is recognised
// however its first bytes arrive.
func TestOpSniffer(t *testing.T) {
	for _, tt := range []struct {
		chunks []string
		set    bool
	}{
		{[]string{"set=1\nprivate_key=00\n\n"}, true},
		{[]string{"s", "e", "t=1\n\n"}, true},
		{[]string{"get=1\n\n"}, false},
		{[]string{"se", "x=1\n"}, false},
		{nil, false},
	} {
		client, server := net.Pipe()
		go func() {
			for _, c := range tt.chunks {
				_, _ = client.Write([]byte(c))
			}
			client.Close()
		}()
		op := &opSniffer{Conn: server}
		buf := make([]byte, 2)
		for {
			if _, err := op.Read(buf); err != nil { // io.EOF once the client is done
				break
			}
		}
		if op.isSet() != tt.set {
			t.Errorf("%q: isSet %v, want %v", tt.chunks, op.isSet(), tt.set)
		}
	}
}
