package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/e2e/lab"
)

// extensionNetConf is the net-conf.json of node n for TestExtensionCluster:
// its commands record what they get into files in n.Dir.
func extensionNetConf(n *lab.Node) string {
	rec := func(file string) string {
		return `echo "SUBNET=$SUBNET IPV6SUBNET=$IPV6SUBNET PUBLIC_IP=$PUBLIC_IP PUBLIC_IPV6=$PUBLIC_IPV6 STDIN=$(cat)" >>` + filepath.Join(n.Dir, file)
	}
	backend := map[string]string{
		"Type":                "extension",
		"PreStartupCommand":   `echo '  data "of" ` + n.Name + `'`,
		"PostStartupCommand":  `env | grep -E '^(NETWORK|SUBNET|IPV6SUBNET|PUBLIC_IP|PUBLIC_IPV6)=' | sort >` + filepath.Join(n.Dir, "post.env"),
		"SubnetAddCommand":    rec("add.log"),
		"SubnetRemoveCommand": rec("remove.log"),
	}
	b, err := json.Marshal(map[string]any{"Network": "10.244.0.0/16", "Backend": backend})
	if err != nil {
		panic(err)
	}
	return string(b)
}

// extensionData is the backend-data of lab node n: PreStartupCommand's
// trimmed output, as a JSON string.
func extensionData(n *lab.Node) string { return `"data \"of\" ` + n.Name + `"` }

// extensionRecord is what SubnetAddCommand and SubnetRemoveCommand record of
// lab node i.
func extensionRecord(i int, n *lab.Node) string {
	return fmt.Sprintf("SUBNET=%s IPV6SUBNET= PUBLIC_IP=%s PUBLIC_IPV6= STDIN=data \"of\" %s", podCIDR(i), underlayIP(i), n.Name)
}

// checkRecords polls file of node n until its lines, sorted, are want.
func checkRecords(t *testing.T, n *lab.Node, file string, want []string) {
	t.Helper()
	slices.Sort(want)
	var got []string
	err := lab.Poll(convergeTimeout, func() error {
		b, err := os.ReadFile(filepath.Join(n.Dir, file))
		if err != nil {
			return err
		}
		got = strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
		slices.Sort(got)
		if !slices.Equal(got, want) {
			return fmt.Errorf("got\n%s", strings.Join(got, "\n"))
		}
		return nil
	})
	if err != nil {
		t.Errorf("%s: %s: %v\nwant\n%s", n.Name, file, err, strings.Join(want, "\n"))
	}
}

// TestExtensionCluster runs flanneld with the extension backend (issue 18)
// on three nodes whose commands record their environment and stdin in the
// node's directory: PreStartupCommand's output is the backend-data (a JSON
// string), PostStartupCommand sees the node's lease, SubnetAddCommand runs
// once per peer with its data on stdin, and deleting a peer's Node runs
// SubnetRemoveCommand for it on the others. Nothing is programmed.
func TestExtensionCluster(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)
	nodes := make([]*lab.Node, 3)
	for i := range nodes {
		nodes[i] = l.AddNode(t, fmt.Sprintf("n%d", i+1), podCIDR(i+1))
	}
	for _, n := range nodes {
		l.StartFlanneld(t, n, writeNetConfFile(t, l, n.Name, extensionNetConf(n)))
	}
	for _, n := range nodes {
		n.WaitReady(t, readyTimeout)
	}

	t.Run("subnet.env", func(t *testing.T) { checkSubnetEnvs(t, nodes, subnetEnvWithMTU, 1500) })

	t.Run("node annotations", func(t *testing.T) { checkBackendAnnotations(t, l, nodes, "extension", extensionData) })

	t.Run("PostStartupCommand", func(t *testing.T) {
		for i, n := range nodes {
			got, err := os.ReadFile(filepath.Join(n.Dir, "post.env"))
			if err != nil {
				t.Errorf("%s: %v", n.Name, err)
				continue
			}
			want := fmt.Sprintf("IPV6SUBNET=\nNETWORK=10.244.0.0/16\nPUBLIC_IP=%s\nPUBLIC_IPV6=\nSUBNET=%s\n", underlayIP(i+1), podCIDR(i+1))
			if string(got) != want {
				t.Errorf("%s: PostStartupCommand's environment:\n%s\nwant:\n%s", n.Name, got, want)
			}
		}
	})

	t.Run("SubnetAddCommand", func(t *testing.T) {
		for i, n := range nodes {
			var want []string
			for j, p := range nodes {
				if j != i {
					want = append(want, extensionRecord(j+1, p))
				}
			}
			checkRecords(t, n, "add.log", want)
		}
	})

	t.Run("nothing programmed", func(t *testing.T) {
		for _, n := range nodes {
			if err := checkNoOwnedRoutes(n.Netns); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
		}
	})

	t.Run("SubnetRemoveCommand", func(t *testing.T) {
		gone := nodes[2]
		gone.Flanneld().Stop()
		l.DeleteNode(t, gone)
		for _, n := range nodes[:2] {
			checkRecords(t, n, "remove.log", []string{extensionRecord(3, gone)})
			requireRunning(t, n)
		}
		// The remaining peer was not added again.
		checkRecords(t, nodes[0], "add.log", []string{extensionRecord(2, nodes[1]), extensionRecord(3, gone)})
	})
}
