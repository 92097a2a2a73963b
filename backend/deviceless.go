package backend

import (
	"context"

	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/subnet"
)

// Deviceless is the part of a backend without a device of its own
// (host-gw, alloc), embedded by them: the node advertises its public IPs
// and no backend data, there is nothing to set up or attach, and pods get
// the external interface's MTU, which follows the interface's.
type Deviceless struct {
	Type       string
	Ext        *ip.ExternalInterface
	IPv4, IPv6 bool
	mtu        int
}

// NewDeviceless returns the device-less part of a backend of type typ.
func NewDeviceless(typ string, p Params) Deviceless {
	return Deviceless{Type: typ, Ext: p.ExtIface, IPv4: p.Config.EnableIPv4, IPv6: p.Config.EnableIPv6, mtu: p.ExtIface.MTU}
}

// Setup implements Backend: the node advertises its public IPs and no
// backend data.
func (d *Deviceless) Setup(context.Context, *subnet.LeaseAttrs) (subnet.LeaseAttrs, error) {
	attrs := subnet.LeaseAttrs{BackendType: d.Type}
	if d.IPv4 {
		attrs.PublicIP = d.Ext.ExtAddr
	}
	if d.IPv6 {
		attrs.PublicIPv6 = d.Ext.ExtV6Addr
	}
	return attrs, nil
}

// Configure implements Backend: nothing to configure.
func (d *Deviceless) Configure(context.Context, subnet.Lease) error { return nil }

// Attach implements Backend: there is no device.
func (d *Deviceless) Attach() error { return nil }

// MTU implements Backend: no encapsulation, the external interface's MTU.
func (d *Deviceless) MTU() int { return d.mtu }

// SetUnderlayMTU implements MTUFollower.
func (d *Deviceless) SetUnderlayMTU(ext int) error {
	d.mtu = ext
	return nil
}

// Base implements Backend: no device, nothing of its own.
func (d *Deviceless) Base() network.State { return network.State{} }
