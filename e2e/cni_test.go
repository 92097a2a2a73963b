package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
)

// TestCNI plugs pods in through the real CNI chain (the flannel plugin with
// the manifest's conflist, delegating to bridge, host-local and portmap,
// run by cnitool) and checks ADD, cross-node traffic, portmap and DEL.
func TestCNI(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)
	n1, n2 := l.AddNode(t, "n1", podCIDR(1)), l.AddNode(t, "n2", podCIDR(2))
	for _, n := range []*lab.Node{n1, n2} {
		l.StartFlanneld(t, n)
	}
	for _, n := range []*lab.Node{n1, n2} {
		if err := n.PollReady(readyTimeout); err != nil {
			t.Fatalf("flanneld on %s: %v", n.Name, err)
		}
	}

	web := l.AddPodWithPorts(t, n1, "web", []lab.PortMapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}})
	a := l.AddPod(t, n1, "a")
	b := l.AddPod(t, n2, "b")

	t.Run("add", func(t *testing.T) {
		if !podCIDRPrefix(1).Contains(web.IP) || !podCIDRPrefix(2).Contains(b.IP) {
			t.Fatalf("pod addresses %s, %s outside their nodes' subnets", web.IP, b.IP)
		}
		if web.Gateway.String() != "10.244.1.1" {
			t.Errorf("gateway %s, want cni0's 10.244.1.1", web.Gateway)
		}
		link, err := lab.ShowLink(web.Netns, "eth0")
		if err != nil || link.MTU != 1450 {
			t.Errorf("pod eth0 MTU %d (%v), want FLANNEL_MTU 1450", link.MTU, err)
		}
		br, err := lab.ShowAddrs(n1.Netns, "cni0")
		if err != nil || len(br) == 0 || br[0].String() != "10.244.1.1/24" {
			t.Errorf("cni0 addresses %v (%v), want 10.244.1.1/24", br, err)
		}
		routes, _ := lab.Exec(web.Netns, "ip", "route")
		if !strings.Contains(routes, "10.244.0.0/16 via 10.244.1.1") {
			t.Errorf("pod routes lack the route to the Network:\n%s", routes)
		}
	})

	t.Run("ping across nodes", func(t *testing.T) { pingAll(t, []*lab.Pod{web, a, b}) })

	t.Run("portmap", func(t *testing.T) {
		ln, err := lab.ListenIn(web.Netns, "tcp", ":80")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				fmt.Fprintln(c, "hello from web")
				c.Close()
			}
		}()
		// From the other node, to this node's address and the host port.
		err = lab.Poll(convergeTimeout, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			c, err := lab.DialContextIn(n2.Netns)(ctx, "tcp", net.JoinHostPort(n1.IP.String(), "8080"))
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				return err
			}
			if line != "hello from web\n" {
				return fmt.Errorf("read %q", line)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("connect to %s:8080 from %s: %v", n1.IP, n2.Name, err)
		}
	})

	t.Run("del leaves nothing behind", func(t *testing.T) {
		l.DelPod(t, web)
		if links, _ := lab.Exec(web.Netns, "ip", "-o", "link", "show", "eth0"); links != "" {
			t.Errorf("pod eth0 still exists: %s", links)
		}
		if _, err := os.Stat(filepath.Join(n1.IPAMDir(), "cbr0", web.IP.String())); !os.IsNotExist(err) {
			t.Errorf("host-local still holds %s: %v", web.IP, err)
		}
		if entries, _ := os.ReadDir(n1.CNIStateDir()); len(entries) != 1 {
			t.Errorf("flannel plugin state after DEL: %d entries, want 1 (pod a)", len(entries))
		}
		save, _ := lab.Exec(n1.Netns, "iptables-save", "-t", "nat")
		if strings.Contains(save, web.IP.String()) || strings.Contains(save, "--dport 8080") {
			t.Errorf("portmap rules for the deleted pod remain:\n%s", save)
		}
		// DEL is idempotent.
		l.DelPod(t, web)
		// The others still talk.
		pingAll(t, []*lab.Pod{a, b})
	})
}

func podCIDRPrefix(i int) netip.Prefix { return netip.MustParsePrefix(podCIDR(i)) }

// TestCNIWithoutFlanneld: the plugin says flanneld is not running when
// subnet.env is missing.
func TestCNIWithoutFlanneld(t *testing.T) {
	flannel := lab.RequireBinary(t, lab.BinaryFlannelCNI)
	conf := `{"cniVersion":"1.0.0","name":"cbr0","type":"flannel","subnetFile":"` +
		filepath.Join(t.TempDir(), "subnet.env") + `","dataDir":"` + t.TempDir() + `"}`
	cmd := exec.Command(flannel)
	cmd.Env = []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=c1", "CNI_NETNS=/proc/self/ns/net", "CNI_IFNAME=eth0", "CNI_PATH=/nonexistent"}
	cmd.Stdin = strings.NewReader(conf)
	out, err := cmd.Output()
	if err == nil {
		t.Fatalf("ADD succeeded without subnet.env: %s", out)
	}
	if !strings.Contains(string(out), "flanneld is not running on this node") {
		t.Fatalf("error result %s does not say flanneld is not running", out)
	}
}
