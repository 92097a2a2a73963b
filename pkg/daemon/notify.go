package daemon

import (
	"net"
	"os"

	"k8s.io/klog/v2"
)

// notifySystemd tells systemd the service is ready (Type=notify units):
// READY=1 on the datagram socket named by $NOTIFY_SOCKET, if any. Repeated
// calls are harmless. (Go maps a leading '@' to an abstract socket.)
func notifySystemd() {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		klog.ErrorS(err, "Could not notify systemd", "socket", path)
		return
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("READY=1")); err != nil {
		klog.ErrorS(err, "Could not notify systemd", "socket", path)
	}
}
