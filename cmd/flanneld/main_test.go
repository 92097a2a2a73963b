package main

import (
	"bytes"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/flanneld/flanneld/pkg/daemon"
)

// referenceDefaults are the defaults of REFERENCE.md section 1, written out
// rather than taken from daemon.DefaultOptions so that a changed default
// fails here.
func referenceDefaults() daemon.Options {
	return daemon.Options{
		KubeSubnetMgr:             false,
		KubeconfigFile:            "",
		KubeAPIURL:                "",
		KubeAnnotationPrefix:      "flannel.alpha.coreos.com",
		EtcdEndpoints:             []string{"http://127.0.0.1:4001", "http://127.0.0.1:2379"},
		EtcdPrefix:                "/coreos.com/network",
		SubnetFile:                "/run/flannel/subnet.env",
		NetConfigPath:             "/etc/kube-flannel/net-conf.json",
		SubnetLeaseRenewMargin:    60,
		IPMasq:                    false,
		IPMasqFullyRandomDisable:  false,
		IPTablesResync:            5,
		IPTablesForwardRules:      true,
		IPBlackholeRoute:          false,
		HealthzIP:                 "0.0.0.0",
		HealthzPort:               0,
		SetNodeNetworkUnavailable: true,
		Resync:                    30 * time.Second,
		PeerProbeInterval:         time.Minute,
		PeerProbeMaxRate:          5,
		Version:                   version,
	}
}

func parse(t *testing.T, args, environ []string) daemon.Options {
	t.Helper()
	var stderr bytes.Buffer
	o, showVersion, err := parseOptions(args, environ, &stderr)
	if err != nil {
		t.Fatalf("parseOptions(%q, %q): %v\n%s", args, environ, err, stderr.String())
	}
	if showVersion {
		t.Fatalf("parseOptions(%q, %q) asked for the version", args, environ)
	}
	return o
}

func TestParseOptionsDefaults(t *testing.T) {
	got := parse(t, nil, nil)
	if want := referenceDefaults(); !reflect.DeepEqual(got, want) {
		t.Errorf("defaults =\n%+v\nwant\n%+v", got, want)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("the defaults do not validate: %v", err)
	}
	// Unrelated environment changes nothing.
	env := []string{"PATH=/usr/bin", "FLANNEL_IFACE=eth9", "IFACE=eth9", "flanneld_ip_masq=true", "FLANNELD_NOT_A_FLAG=1", "garbage", "=x"}
	if got := parse(t, nil, env); !reflect.DeepEqual(got, referenceDefaults()) {
		t.Errorf("unrelated environment changed the options: %+v", got)
	}
}

// change returns the reference defaults modified by f.
func change(f func(o *daemon.Options)) daemon.Options {
	o := referenceDefaults()
	f(&o)
	return o
}

func TestParseOptionsFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want daemon.Options
	}{
		{"kube mode", []string{"--ip-masq", "--kube-subnet-mgr"}, change(func(o *daemon.Options) { o.IPMasq, o.KubeSubnetMgr = true, true })},
		{"kubeconfig", []string{"--kubeconfig-file=/etc/k.conf", "--kube-api-url", "https://10.0.0.1:6443"},
			change(func(o *daemon.Options) { o.KubeconfigFile, o.KubeAPIURL = "/etc/k.conf", "https://10.0.0.1:6443" })},
		{"annotation prefix", []string{"--kube-annotation-prefix=example.com/fl"}, change(func(o *daemon.Options) { o.KubeAnnotationPrefix = "example.com/fl" })},
		{"etcd", []string{"--etcd-endpoints=https://a:2379,https://b:2379", "--etcd-prefix=/x", "--etcd-keyfile=k", "--etcd-certfile=c",
			"--etcd-cafile=ca", "--etcd-username=u", "--etcd-password=p"}, change(func(o *daemon.Options) {
			o.EtcdEndpoints = []string{"https://a:2379", "https://b:2379"}
			o.EtcdPrefix, o.EtcdKeyfile, o.EtcdCertfile, o.EtcdCAFile, o.EtcdUsername, o.EtcdPassword = "/x", "k", "c", "ca", "u", "p"
		})},
		{"repeated iface", []string{"--iface=eth0", "--iface", "192.168.1.1"}, change(func(o *daemon.Options) { o.Iface = []string{"eth0", "192.168.1.1"} })},
		// --iface is repeatable, not a comma list: a name never holds a comma
		// anyway, but the value is kept as given for the error message.
		{"iface with a comma on the command line", []string{"--iface=eth0,eth1"}, change(func(o *daemon.Options) { o.Iface = []string{"eth0,eth1"} })},
		{"iface-regex with commas", []string{"--iface-regex=^10\\.(1|2)\\.", "--iface-regex=eth{1,2}"},
			change(func(o *daemon.Options) { o.IfaceRegex = []string{`^10\.(1|2)\.`, "eth{1,2}"} })},
		{"iface-can-reach", []string{"--iface-can-reach=8.8.8.8"}, change(func(o *daemon.Options) { o.IfaceCanReach = "8.8.8.8" })},
		{"public ips", []string{"--public-ip=203.0.113.1", "--public-ipv6=2001:db8::1"},
			change(func(o *daemon.Options) { o.PublicIP, o.PublicIPv6 = "203.0.113.1", "2001:db8::1" })},
		{"files", []string{"--subnet-file=/tmp/s.env", "--net-config-path=/tmp/n.json"},
			change(func(o *daemon.Options) { o.SubnetFile, o.NetConfigPath = "/tmp/s.env", "/tmp/n.json" })},
		{"numbers", []string{"--subnet-lease-renew-margin=30", "--iptables-resync=10", "--healthz-port=8471", "--healthz-ip=127.0.0.1"},
			change(func(o *daemon.Options) {
				o.SubnetLeaseRenewMargin, o.IPTablesResync, o.HealthzPort, o.HealthzIP = 30, 10, 8471, "127.0.0.1"
			})},
		{"booleans off", []string{"--iptables-forward-rules=false", "--set-node-network-unavailable=false"},
			change(func(o *daemon.Options) { o.IPTablesForwardRules, o.SetNodeNetworkUnavailable = false, false })},
		{"booleans on", []string{"--ip-masq-fully-random-disable", "--ip-blackhole-route=true"},
			change(func(o *daemon.Options) { o.IPMasqFullyRandomDisable, o.IPBlackholeRoute = true, true })},
		{"klog verbosity", []string{"-v=0"}, referenceDefaults()},
		{"klog verbosity, long", []string{"--v=0", "--logtostderr"}, referenceDefaults()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := parse(t, tt.args, nil); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("parseOptions(%q) =\n%+v\nwant\n%+v", tt.args, got, tt.want)
			}
		})
	}
}

func TestParseOptionsEnvironment(t *testing.T) {
	tests := []struct {
		name string
		env  []string
		want daemon.Options
	}{
		{"ip-masq", []string{"FLANNELD_IP_MASQ=true"}, change(func(o *daemon.Options) { o.IPMasq = true })},
		{"kube mode as 1", []string{"FLANNELD_KUBE_SUBNET_MGR=1"}, change(func(o *daemon.Options) { o.KubeSubnetMgr = true })},
		{"two ifaces", []string{"FLANNELD_IFACE=eth0,eth1"}, change(func(o *daemon.Options) { o.Iface = []string{"eth0", "eth1"} })},
		{"one iface", []string{"FLANNELD_IFACE=10.0.0.5"}, change(func(o *daemon.Options) { o.Iface = []string{"10.0.0.5"} })},
		{"iface regex", []string{"FLANNELD_IFACE_REGEX=^eth,^ens"}, change(func(o *daemon.Options) { o.IfaceRegex = []string{"^eth", "^ens"} })},
		{"etcd endpoints", []string{"FLANNELD_ETCD_ENDPOINTS=https://a:2379,https://b:2379"},
			change(func(o *daemon.Options) { o.EtcdEndpoints = []string{"https://a:2379", "https://b:2379"} })},
		{"dashes become underscores", []string{"FLANNELD_SUBNET_LEASE_RENEW_MARGIN=30", "FLANNELD_IPTABLES_FORWARD_RULES=false",
			"FLANNELD_KUBE_ANNOTATION_PREFIX=example.com/fl", "FLANNELD_SET_NODE_NETWORK_UNAVAILABLE=false"},
			change(func(o *daemon.Options) {
				o.SubnetLeaseRenewMargin, o.IPTablesForwardRules = 30, false
				o.KubeAnnotationPrefix, o.SetNodeNetworkUnavailable = "example.com/fl", false
			})},
		{"public ip and subnet file", []string{"FLANNELD_PUBLIC_IP=203.0.113.1", "FLANNELD_SUBNET_FILE=/tmp/s.env"},
			change(func(o *daemon.Options) { o.PublicIP, o.SubnetFile = "203.0.113.1", "/tmp/s.env" })},
		{"value containing =", []string{"FLANNELD_ETCD_PASSWORD=a=b"}, change(func(o *daemon.Options) { o.EtcdPassword = "a=b" })},
		// Upstream ignores an empty variable (flagutil.SetFlagsFromEnv sets
		// a flag only when the value is not ""), so `FLANNELD_IFACE=` in an
		// options file keeps the default.
		{"empty values are ignored", []string{"FLANNELD_IP_MASQ=", "FLANNELD_IFACE=", "FLANNELD_IPTABLES_RESYNC=", "FLANNELD_ETCD_ENDPOINTS="},
			referenceDefaults()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := parse(t, nil, tt.env); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("parseOptions(env %q) =\n%+v\nwant\n%+v", tt.env, got, tt.want)
			}
		})
	}
}

func TestParseOptionsCommandLineWins(t *testing.T) {
	env := []string{
		"FLANNELD_IFACE=eth0,eth1",
		"FLANNELD_IP_MASQ=true",
		"FLANNELD_SUBNET_FILE=/env/subnet.env",
		"FLANNELD_ETCD_ENDPOINTS=http://env:2379",
		"FLANNELD_HEALTHZ_PORT=1111",
		"FLANNELD_PUBLIC_IP=203.0.113.1",
	}
	args := []string{"--iface=eth2", "--ip-masq=false", "--subnet-file=/cli/subnet.env", "--etcd-endpoints=http://cli:2379", "--healthz-port=2222"}
	got := parse(t, args, env)
	want := change(func(o *daemon.Options) {
		o.Iface = []string{"eth2"}
		o.IPMasq = false
		o.SubnetFile = "/cli/subnet.env"
		o.EtcdEndpoints = []string{"http://cli:2379"}
		o.HealthzPort = 2222
		o.PublicIP = "203.0.113.1" // only in the environment
	})
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseOptions =\n%+v\nwant\n%+v", got, want)
	}
	// A flag given with its default value still wins.
	got = parse(t, []string{"--iptables-forward-rules=true"}, []string{"FLANNELD_IPTABLES_FORWARD_RULES=false"})
	if !got.IPTablesForwardRules {
		t.Error("FLANNELD_IPTABLES_FORWARD_RULES=false overrode --iptables-forward-rules=true")
	}
}

// runCmd runs the command; it must not get as far as starting the daemon.
func runCmd(t *testing.T, args, environ []string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(args, environ, &out, &errb)
	return code, out.String(), errb.String()
}

func TestRunErrors(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     []string
		wantErr []string // substrings of stderr
	}{
		{"bad flag value", []string{"--iptables-resync=soon"}, nil, []string{"flanneld:", "iptables-resync", "soon"}},
		{"bad bool flag", []string{"--ip-masq=maybe"}, nil, []string{"ip-masq", "maybe"}},
		{"unknown flag", []string{"--no-such-flag"}, nil, []string{"no-such-flag"}},
		{"missing value", []string{"--subnet-file"}, nil, []string{"subnet-file"}},
		{"bad env value", nil, []string{"FLANNELD_IPTABLES_RESYNC=soon"}, []string{"flanneld:", "FLANNELD_IPTABLES_RESYNC", "soon"}},
		{"bad env bool", nil, []string{"FLANNELD_IP_MASQ=maybe"}, []string{"FLANNELD_IP_MASQ", "maybe"}},
		{"two bad env values", nil, []string{"FLANNELD_IP_MASQ=maybe", "FLANNELD_HEALTHZ_PORT=x"},
			[]string{"FLANNELD_IP_MASQ", "FLANNELD_HEALTHZ_PORT"}},
		{"positional argument", []string{"--ip-masq", "extra"}, nil, []string{"unexpected arguments: extra"}},
		// A common mistake: a bool flag takes no separate value.
		{"bool with a separate value", []string{"--ip-masq", "true"}, nil, []string{"unexpected arguments: true"}},
		{"arguments after --", []string{"--", "a", "b"}, nil, []string{"unexpected arguments: a b"}},
		{"invalid option", []string{"--subnet-lease-renew-margin=0"}, nil, []string{"invalid options", "--subnet-lease-renew-margin"}},
		{"invalid option from env", nil, []string{"FLANNELD_PUBLIC_IP=2001:db8::1"}, []string{"invalid options", "--public-ip"}},
		{"several invalid options", []string{"--iptables-resync=0", "--healthz-port=70000"}, nil,
			[]string{"--iptables-resync", "--healthz-port"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCmd(t, tt.args, tt.env)
			if code != 1 {
				t.Errorf("exit status %d, want 1", code)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr does not mention %q:\n%s", w, stderr)
				}
			}
			if stdout != "" {
				t.Errorf("stdout = %q, want nothing", stdout)
			}
		})
	}
}

func TestRunVersion(t *testing.T) {
	defer func(v string) { version = v }(version)
	version = "v9.8.7-test"
	for _, args := range [][]string{{"--version"}, {"--version=true"}, {"--ip-masq", "--version"}} {
		code, stdout, stderr := runCmd(t, args, nil)
		if code != 0 || stdout != "v9.8.7-test\n" {
			t.Errorf("run(%q) = %d, stdout %q, stderr %q; want 0 and the version", args, code, stdout, stderr)
		}
	}
	// The version is reported even with options that would not validate:
	// nothing is started.
	if code, stdout, _ := runCmd(t, []string{"--version", "--iptables-resync=0"}, nil); code != 0 || stdout != "v9.8.7-test\n" {
		t.Errorf("--version with an invalid option: %d %q", code, stdout)
	}
	// parseOptions reports the version in the options too (User-Agent).
	if o := parse(t, nil, nil); o.Version != "v9.8.7-test" {
		t.Errorf("Options.Version = %q", o.Version)
	}
	// From the environment, as every flag.
	if code, stdout, _ := runCmd(t, nil, []string{"FLANNELD_VERSION=true"}); code != 0 || stdout != "v9.8.7-test\n" {
		t.Errorf("FLANNELD_VERSION=true: %d %q", code, stdout)
	}
}

func TestRunHelp(t *testing.T) {
	for _, arg := range []string{"-h", "--help"} {
		code, _, stderr := runCmd(t, []string{arg}, nil)
		if code != 0 {
			t.Errorf("%s: exit status %d, want 0", arg, code)
		}
		// Every flag of REFERENCE.md section 1 is there.
		for _, f := range []string{
			"kube-subnet-mgr", "kubeconfig-file", "kube-api-url", "kube-annotation-prefix",
			"etcd-endpoints", "etcd-prefix", "etcd-keyfile", "etcd-certfile", "etcd-cafile", "etcd-username", "etcd-password",
			"iface", "iface-regex", "iface-can-reach", "public-ip", "public-ipv6",
			"subnet-file", "net-config-path", "subnet-lease-renew-margin",
			"ip-masq", "ip-masq-fully-random-disable", "iptables-resync", "iptables-forward-rules", "ip-blackhole-route",
			"healthz-ip", "healthz-port", "set-node-network-unavailable", "version",
		} {
			if !strings.Contains(stderr, "--"+f+" ") {
				t.Errorf("%s: usage does not list --%s", arg, f)
			}
		}
		if !strings.Contains(stderr, "-v, --v") && !strings.Contains(stderr, "--v ") {
			t.Errorf("%s: usage does not list klog's -v", arg)
		}
	}
}

func TestParseOptionsWritesNothingOnSuccess(t *testing.T) {
	var stderr bytes.Buffer
	if _, _, err := parseOptions([]string{"--ip-masq"}, []string{"FLANNELD_IFACE=eth0"}, &stderr); err != nil {
		t.Fatal(err)
	}
	if stderr.Len() != 0 {
		t.Errorf("parseOptions wrote %q", stderr.String())
	}
}

func TestSetFromEnv(t *testing.T) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	arr := fs.StringArray("some-array", []string{"default"}, "")
	slice := fs.StringSlice("some-slice", []string{"d1", "d2"}, "")
	str := fs.String("some-string", "default", "")
	given := fs.String("given", "default", "")
	n := fs.Int("n", 1, "")
	if err := fs.Parse([]string{"--given=cli"}); err != nil {
		t.Fatal(err)
	}
	err := setFromEnv(fs, []string{
		"FLANNELD_SOME_ARRAY=a,b,c",
		"FLANNELD_SOME_SLICE=x,y",
		"FLANNELD_SOME_STRING=s,t", // a plain string keeps its commas
		"FLANNELD_GIVEN=env",
		"FLANNELD_N=",
	})
	if err != nil {
		t.Fatalf("setFromEnv: %v", err)
	}
	if !slices.Equal(*arr, []string{"a", "b", "c"}) {
		t.Errorf("array = %q, want the environment's list replacing the default", *arr)
	}
	if !slices.Equal(*slice, []string{"x", "y"}) {
		t.Errorf("slice = %q", *slice)
	}
	if *str != "s,t" || *given != "cli" || *n != 1 {
		t.Errorf("string %q, given %q, n %d; want \"s,t\", cli, 1", *str, *given, *n)
	}

	if err := setFromEnv(fs, []string{"FLANNELD_N=x"}); err == nil || !strings.Contains(err.Error(), `FLANNELD_N="x"`) {
		t.Errorf("bad value: error %v, want one naming the variable and value", err)
	}
}
