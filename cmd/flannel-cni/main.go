// Command flannel-cni is the "flannel" CNI plugin (installed as
// /opt/cni/bin/flannel): it reads flanneld's subnet.env and delegates to the
// bridge plugin with host-local IPAM over the node's subnet.
package main

import (
	"context"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/flanneld/flanneld/pkg/cni"
)

var buildVersion = "dev"

func main() {
	p := cni.Plugin{Delegator: cni.Invoke{}}
	ctx := context.Background()
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add: func(args *skel.CmdArgs) error {
			res, cniVersion, err := p.Add(ctx, args.ContainerID, args.StdinData)
			if err != nil {
				return err
			}
			return types.PrintResult(res, cniVersion)
		},
		Del: func(args *skel.CmdArgs) error {
			return p.Del(ctx, args.ContainerID, args.StdinData)
		},
		Check: func(args *skel.CmdArgs) error {
			return p.Check(ctx, args.ContainerID, args.StdinData)
		},
	}, version.All, "flannel CNI plugin (flanneld "+buildVersion+")")
}
