package diagnose

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/backend/vxlan"
	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/network/kernel"
	"github.com/flanneld/flanneld/pkg/daemon"
	"github.com/flanneld/flanneld/subnet"
	"github.com/flanneld/flanneld/subnet/etcd"
	"github.com/flanneld/flanneld/subnet/kube"
)

// Flags are diagnose's own command-line flags, besides the daemon's.
type Flags struct {
	// JSON prints the report as JSON instead of tables.
	JSON bool
	// Probe pings every programmed peer once.
	Probe bool
}

// apiTimeout bounds the API requests (the node name, the List of Nodes).
const apiTimeout = 30 * time.Second

// probeTimeout bounds one ping: `ping -c1 -W1` plus the process start.
const probeTimeout = 3 * time.Second

// Run diagnoses this node with the daemon's options o and prints the
// report to w. It returns whether everything matched; an error means the
// diagnosis could not be made (no report, or an incomplete one).
func Run(ctx context.Context, o daemon.Options, f Flags, w io.Writer) (ok bool, err error) {
	in, closeInputs, err := Collect(ctx, o, f.Probe)
	if err != nil {
		return false, err
	}
	defer closeInputs()
	r, buildErr := Build(in)
	if f.JSON {
		err = WriteJSON(w, r)
	} else {
		err = WriteText(w, r)
	}
	if buildErr != nil {
		return false, buildErr
	}
	return r.OK, err
}

// Collect gathers the Inputs on this node, reading exactly what the daemon
// reads (its options, net-conf.json, the Nodes, the kernel) and changing
// nothing. The returned function releases the netlink handle.
func Collect(ctx context.Context, o daemon.Options, probe bool) (Inputs, func(), error) {
	noop := func() {}
	if err := o.Validate(); err != nil {
		return Inputs{}, noop, err
	}
	apiCtx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	cfg, etcdSrc, err := readConfig(apiCtx, o)
	if etcdSrc != nil {
		defer etcdSrc.Close()
	}
	if err != nil {
		return Inputs{}, noop, err
	}

	h, err := netlink.NewHandle()
	if err != nil {
		return Inputs{}, noop, fmt.Errorf("open netlink: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			h.Close()
		}
	}()
	ext, err := ip.LookupExternalInterface(h, o.InterfaceOptions(cfg))
	if err != nil {
		return Inputs{}, noop, err
	}
	be, err := daemon.Backends().New(backend.Params{Config: cfg, ExtIface: ext, Handle: h, Reach: ip.KernelReachability{H: h}})
	if err != nil {
		return Inputs{}, noop, err
	}
	in := Inputs{
		Config:   cfg,
		ExtIface: ext,
		Backend:  be,
		Kernel:   kernel.NewNetlink(h),
		LinkName: linkNamer(h),
		Env:      EnvInput{Path: o.SubnetFile},
	}
	if in.Segments, err = ip.LinkPrefixes(h, ext.Index); err != nil {
		return Inputs{}, noop, err
	}
	in.AttachErr = be.Attach()
	if in.AttachErr == nil {
		if in.Devices, err = readDevices(h, be.Base().OwnedLinks); err != nil {
			return Inputs{}, noop, err
		}
	}
	if in.PodBridge, err = readPodBridge(h); err != nil {
		return Inputs{}, noop, err
	}
	// What the daemon would advertise, before the Node's annotations apply.
	local := subnet.LeaseAttrs{PublicIP: ext.ExtAddr, PublicIPv6: ext.ExtV6Addr, BackendType: cfg.BackendType}
	local.BackendData, local.BackendV6Data = deviceData(cfg, in.Devices)
	if etcdSrc != nil {
		err = collectEtcdLeases(apiCtx, etcdSrc, ext, local, &in)
	} else {
		err = collectKubeLeases(apiCtx, o, local, &in)
	}
	if err != nil {
		return Inputs{}, noop, err
	}

	if err := collectFirewall(&o, &in); err != nil {
		return Inputs{}, noop, err
	}
	in.Env.Expected = subnet.NewEnv(cfg, &in.Own, be.MTU(), o.IPMasq)
	in.Env.OnDisk, in.Env.ReadErr = os.ReadFile(o.SubnetFile)
	in.Probes = readProbeState(os.ReadFile(daemon.ProbeStatePath(o.SubnetFile)))
	if probe {
		in.Probe = func(a netip.Addr) error { return ping(ctx, a) }
	}
	ok = true
	return in, func() { h.Close() }, nil
}

// collectFirewall sets up the read-only check of the firewall rules the
// daemon keeps for in.Own, and looks for rules of the other mode.
func collectFirewall(o *daemon.Options, in *Inputs) error {
	cfg := in.Config
	in.FirewallMode = daemon.FirewallMode(cfg)
	if sets := daemon.FirewallRuleSets(o, cfg, in.Own); len(sets) > 0 {
		var err error
		if in.Firewall, err = network.NewRuleKeeper(cfg.EnableNFTables, sets, nil); err != nil {
			return err
		}
	}
	in.OtherMode, in.OtherModeErr = network.FindOtherModeRules(cfg.EnableNFTables)
	return nil
}

// readConfig reads the network configuration as the daemon does: from
// net-conf.json, or from etcd (whose source is returned, to be closed).
func readConfig(ctx context.Context, o daemon.Options) (*subnet.Config, *etcd.Source, error) {
	if o.KubeSubnetMgr {
		cfg, err := subnet.ReadConfigFile(o.NetConfigPath)
		return cfg, nil, err
	}
	src, err := etcd.New(o.EtcdConfig())
	if err != nil {
		return nil, nil, err
	}
	cfg, err := src.NetworkConfig(ctx)
	return cfg, src, err
}

// collectKubeLeases reads this node's and its peers' leases from the Nodes.
func collectKubeLeases(ctx context.Context, o daemon.Options, local subnet.LeaseAttrs, in *Inputs) error {
	client, err := kube.NewClient(o.KubeconfigFile, o.KubeAPIURL, "flanneld-diagnose/"+o.Version)
	if err != nil {
		return err
	}
	if in.Node, err = kube.NodeName(ctx, client); err != nil {
		return err
	}
	leases, err := kube.ListLeases(ctx, client, o.KubeAnnotationPrefix, in.Node)
	if err != nil {
		return err
	}
	switch {
	case leases.Own == nil:
		return fmt.Errorf("node %s does not exist in the API (is NODE_NAME right?)", in.Node)
	case leases.OwnErr != nil:
		return fmt.Errorf("this node's lease: %w", leases.OwnErr)
	}
	in.Own, in.Peers, in.Skipped = *leases.Own, leases.Peers, leases.Skipped
	in.Local, err = leases.Advertise(local, o.PublicIP != "", o.PublicIPv6 != "")
	return err
}

// collectEtcdLeases reads the leases from etcd: this host's is the one with
// its public IP.
func collectEtcdLeases(ctx context.Context, src *etcd.Source, ext *ip.ExternalInterface, local subnet.LeaseAttrs, in *Inputs) error {
	src.SetPublicIP(ext.ExtAddr)
	src.SetPublicIPv6(ext.ExtV6Addr)
	host := ext.ExtAddr
	if !host.IsValid() {
		host = ext.ExtV6Addr // IPv6-only
	}
	snap, err := src.ListLeases(ctx)
	if err != nil {
		return err
	}
	if snap.Own == nil {
		return fmt.Errorf("no lease in etcd has this host's public IP %s (is flanneld running, with the same --iface/--public-ip/--public-ipv6?)", host)
	}
	in.Node = "host " + host.String()
	in.Own, in.Peers, in.Skipped, in.Local = *snap.Own, snap.Peers, snap.Skipped, local
	return nil
}

// readDevices reads the backend's owned links: their addresses of both
// families (ip.LinkPrefixes: link-local ones left out, as the daemon
// leaves them alone) and, for a VXLAN device, its VNI and local address.
func readDevices(h *netlink.Handle, links []int) ([]Device, error) {
	var out []Device
	for _, idx := range links {
		link, err := h.LinkByIndex(idx)
		if err != nil {
			return nil, fmt.Errorf("read device %d: %w", idx, err)
		}
		a := link.Attrs()
		d := Device{Name: a.Name, Index: a.Index, Type: link.Type(), MAC: a.HardwareAddr.String(), MTU: a.MTU, Up: a.Flags&net.FlagUp != 0}
		if d.Addresses, err = ip.LinkPrefixes(h, a.Index); err != nil {
			return nil, fmt.Errorf("list addresses of %s: %w", a.Name, err)
		}
		if v, ok := link.(*netlink.Vxlan); ok {
			d.VNI = v.VxlanId
			if local, ok := netip.AddrFromSlice(v.SrcAddr); ok {
				d.Local = local.Unmap()
			}
		}
		out = append(out, d)
	}
	return out, nil
}

// readPodBridge reads the node's cni0 bridge and its ports (the links
// whose master it is: the host side of each pod's veth) with their MTUs;
// nil when there is no cni0 (no pod was created yet).
func readPodBridge(h *netlink.Handle) (*Bridge, error) {
	links, err := ip.Dump{H: h}.Links()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	i := slices.IndexFunc(links, func(l netlink.Link) bool { return l.Attrs().Name == PodBridge })
	if i < 0 {
		return nil, nil
	}
	br := &Bridge{Name: PodBridge, Ports: []BridgePort{}}
	for _, l := range links {
		if a := l.Attrs(); a.MasterIndex == links[i].Attrs().Index {
			br.Ports = append(br.Ports, BridgePort{Name: a.Name, MTU: a.MTU})
		}
	}
	return br, nil
}

// deviceData is the backend data the devices imply, for the IPv4 and the
// IPv6 device: for vxlan the VNI and the VTEP MAC of flannel.<VNI> and
// flannel-v6.<VNI>; nothing for backends without data.
func deviceData(cfg *subnet.Config, devices []Device) (v4, v6 json.RawMessage) {
	if cfg.BackendType != vxlan.Type {
		return nil, nil
	}
	for _, d := range devices {
		if d.Type != "vxlan" {
			continue
		}
		data, err := json.Marshal(vxlan.Data{VNI: d.VNI, VtepMAC: d.MAC})
		if err != nil {
			continue
		}
		if ipv6 := deviceIPv6(d, cfg); ipv6 && v6 == nil {
			v6 = data
		} else if !ipv6 && v4 == nil {
			v4 = data
		}
	}
	return v4, v6
}

// linkNamer names link indexes by the kernel's link names.
func linkNamer(h *netlink.Handle) func(int) string {
	names := map[int]string{}
	return func(idx int) string {
		if n, ok := names[idx]; ok {
			return n
		}
		n := strconv.Itoa(idx)
		if link, err := h.LinkByIndex(idx); err == nil {
			n = link.Attrs().Name
		}
		names[idx] = n
		return n
	}
}

// ping sends one echo request to a and waits a second for the reply.
func ping(ctx context.Context, a netip.Addr) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ping", "-n", "-c1", "-W1", a.String()).CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		return fmt.Errorf("cannot run ping: %w", err) // not installed, say
	}
	if err != nil {
		if len(out) > 0 && !strings.Contains(string(out), "1 packets transmitted") {
			return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
		}
		return fmt.Errorf("no reply within 1s")
	}
	return nil
}
