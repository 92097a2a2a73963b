package lab

// Bare hosts: a lab without Kubernetes, whose nodes run flanneld in etcd
// mode against an etcd of their own on the underlay.
//
//	underlay netns fl<id>-ul: bridge br0
//	 ├─ fl<id>-etcd  eth0 192.168.100.3   etcd (client URL on :2379, http or https)
//	 ├─ fl<id>-n1    eth0 192.168.100.11  flanneld --etcd-endpoints=...
//	 └─ ...

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// BinaryEtcdctl is etcd's command-line client (Debian's etcd-client).
var BinaryEtcdctl = Binary{Env: "ETCDCTL", Absolute: "/usr/bin/etcdctl"}

// EtcdIP is the underlay address of a bare-host lab's etcd.
var EtcdIP = netip.MustParseAddr("192.168.100.3")

// EtcdPrefix is flanneld's default --etcd-prefix.
const EtcdPrefix = "/coreos.com/network"

// NewBare builds a lab without a control plane: the underlay only, for
// bare hosts (AddBareNode) running flanneld in etcd mode (StartEtcd). It
// needs root; see RequireRoot. WithIPv6 gives the underlay and the hosts
// IPv6 too (etcd itself stays at EtcdIP).
func NewBare(t testing.TB, opts ...Option) *Lab {
	t.Helper()
	RequireRoot(t)
	return newUnderlayLab(t, "bare lab", opts)
}

// AddBareNode creates a node namespace like AddNode (eth0 at
// 192.168.100.11, .12, ..., default route via UnderlayGateway, IPv4
// forwarding on) without a Node object: a bare host.
func (l *Lab) AddBareNode(t testing.TB, name string) *Node {
	t.Helper()
	return l.addNodeNamespace(t, Segment1, name)
}

// EtcdOptions configures StartEtcd.
type EtcdOptions struct {
	// TLS serves the client URL over https and requires client
	// certificates signed by the lab's CA (Etcd.TLS has the files).
	TLS bool
}

// EtcdTLS are the PEM files of a TLS etcd: its CA, and a client
// certificate the CA signed (for flanneld and etcdctl).
type EtcdTLS struct {
	CAFile, CertFile, KeyFile string
	// ServerCertFile and ServerKeyFile are etcd's own.
	ServerCertFile, ServerKeyFile string
}

// Etcd is a bare-host lab's etcd, in namespace fl<id>-etcd at EtcdIP.
type Etcd struct {
	Netns string
	// URL is the client URL, reachable from every lab namespace.
	URL string
	// TLS is set for a TLS etcd.
	TLS *EtcdTLS

	lab  *Lab
	argv []string
	proc *Process
}

// StartEtcd starts the lab's etcd and waits until it serves requests.
func (l *Lab) StartEtcd(t testing.TB, opts EtcdOptions) *Etcd {
	t.Helper()
	bin := RequireBinary(t, BinaryEtcd)
	RequireBinary(t, BinaryEtcdctl)
	e := &Etcd{Netns: netnsName(l.runID, "etcd"), lab: l}
	dir := filepath.Join(l.dir, "etcd")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := l.attachToSegment(e.Netns, "v-etcd", Segment1, EtcdIP); err != nil {
		t.Fatalf("creating the etcd namespace: %v", err)
	}
	scheme := "http"
	if opts.TLS {
		scheme = "https"
		tls, err := writeEtcdCerts(filepath.Join(dir, "pki"))
		if err != nil {
			t.Fatalf("writing etcd certificates: %v", err)
		}
		e.TLS = tls
	}
	e.URL = fmt.Sprintf("%s://%s:2379", scheme, EtcdIP)
	const peerURL = "http://127.0.0.1:2380"
	e.argv = []string{bin,
		"--name=lab",
		"--data-dir=" + filepath.Join(dir, "data"),
		"--listen-client-urls=" + e.URL,
		"--advertise-client-urls=" + e.URL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=lab=" + peerURL,
	}
	if e.TLS != nil {
		e.argv = append(e.argv,
			"--cert-file="+e.TLS.ServerCertFile,
			"--key-file="+e.TLS.ServerKeyFile,
			"--trusted-ca-file="+e.TLS.CAFile,
			"--client-cert-auth",
		)
	}
	e.Start(t)
	return e
}

// Start starts etcd (again, after Stop: same data directory, same
// revisions and leases) and waits until it answers.
func (e *Etcd) Start(t testing.TB) {
	t.Helper()
	if e.proc != nil && e.proc.Running() {
		t.Fatalf("etcd is already running")
	}
	p, err := e.lab.start(e.Netns, "etcd", nil, e.argv)
	if err != nil {
		t.Fatalf("starting etcd: %v", err)
	}
	e.proc = p
	err = Poll(startupTimeout, func() error {
		if !p.Running() {
			return fmt.Errorf("etcd %s; log tail:\n%s", p.describeExit(), tail(p.Log(), 30))
		}
		_, err := e.ctl("endpoint", "health")
		return err
	})
	if err != nil {
		t.Fatalf("etcd not ready: %v", err)
	}
}

// Stop stops etcd (SIGTERM) and waits for it to exit.
func (e *Etcd) Stop(t testing.TB) {
	t.Helper()
	e.proc.Stop()
}

// Process is the running (or last) etcd process.
func (e *Etcd) Process() *Process { return e.proc }

// FlanneldArgs are the etcd flags flanneld needs for this etcd.
func (e *Etcd) FlanneldArgs() []string {
	args := []string{"--etcd-endpoints=" + e.URL}
	if e.TLS != nil {
		args = append(args, "--etcd-cafile="+e.TLS.CAFile, "--etcd-certfile="+e.TLS.CertFile, "--etcd-keyfile="+e.TLS.KeyFile)
	}
	return args
}

// Ctl runs etcdctl against this etcd (inside its namespace) and returns
// its standard output, failing the test on error.
func (e *Etcd) Ctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := e.ctl(args...)
	if err != nil {
		t.Fatalf("etcdctl %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func (e *Etcd) ctl(args ...string) (string, error) {
	bin, err := resolveBinary(BinaryEtcdctl)
	if err != nil {
		return "", err
	}
	argv := []string{"env", "ETCDCTL_API=3", bin, "--endpoints=" + e.URL, "--command-timeout=10s"}
	if e.TLS != nil {
		argv = append(argv, "--cacert="+e.TLS.CAFile, "--cert="+e.TLS.CertFile, "--key="+e.TLS.KeyFile)
	}
	return Exec(e.Netns, append(argv, args...)...)
}

// Put writes key=value (etcdctl put).
func (e *Etcd) Put(t testing.TB, key, value string) {
	t.Helper()
	e.Ctl(t, "put", key, value)
}

// PutNetworkConfig writes flanneld's network configuration under EtcdPrefix.
func (e *Etcd) PutNetworkConfig(t testing.TB, config string) {
	t.Helper()
	e.Put(t, EtcdPrefix+"/config", config)
}

// EtcdKV is one key as etcd holds it.
type EtcdKV struct {
	Key, Value  string
	Lease       int64 // the etcd lease the key is bound to; 0 for none
	ModRevision int64
}

// Keys lists the keys under prefix (etcdctl get --prefix -w json).
func (e *Etcd) Keys(t testing.TB, prefix string) []EtcdKV {
	t.Helper()
	kvs, err := e.keys(prefix)
	if err != nil {
		t.Fatal(err)
	}
	return kvs
}

// LeaseKeys lists flanneld's lease keys, by subnet name ("10.244.3.0-24").
func (e *Etcd) LeaseKeys(t testing.TB) map[string]EtcdKV {
	t.Helper()
	out := map[string]EtcdKV{}
	for _, kv := range e.Keys(t, EtcdPrefix+"/subnets/") {
		out[strings.TrimPrefix(kv.Key, EtcdPrefix+"/subnets/")] = kv
	}
	return out
}

func (e *Etcd) keys(prefix string) ([]EtcdKV, error) {
	out, err := e.ctl("get", "--prefix", "-w", "json", prefix)
	if err != nil {
		return nil, err
	}
	var resp struct {
		Kvs []struct {
			Key         string `json:"key"`
			Value       string `json:"value"`
			Lease       int64  `json:"lease"`
			ModRevision int64  `json:"mod_revision"`
		} `json:"kvs"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		return nil, fmt.Errorf("etcdctl get -w json: %w: %q", err, out)
	}
	var kvs []EtcdKV
	for _, kv := range resp.Kvs {
		k, err1 := base64.StdEncoding.DecodeString(kv.Key)
		v, err2 := base64.StdEncoding.DecodeString(kv.Value)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("etcdctl get -w json: bad base64 in %+v", kv)
		}
		kvs = append(kvs, EtcdKV{Key: string(k), Value: string(v), Lease: kv.Lease, ModRevision: kv.ModRevision})
	}
	return kvs, nil
}

// EtcdFlanneldArgs are the arguments StartEtcdFlanneld gives flanneld on
// bare host n: etcd mode (no --kube-subnet-mgr) against e.
func (l *Lab) EtcdFlanneldArgs(e *Etcd, n *Node) []string {
	return append(e.FlanneldArgs(),
		"--iface=eth0",
		"--ip-masq",
		"--subnet-file="+n.SubnetFile,
		"--healthz-ip=127.0.0.1",
		fmt.Sprintf("--healthz-port=%d", HealthzPort),
		"-v=2",
	)
}

// StartEtcdFlanneld runs flanneld in etcd mode on bare host n, with env
// added to its environment. An extra "--name=value" argument replaces the
// default of the same name; other extra arguments are appended.
func (l *Lab) StartEtcdFlanneld(t testing.TB, e *Etcd, n *Node, env []string, extraArgs ...string) *Process {
	t.Helper()
	bin := RequireBinary(t, BinaryFlanneld)
	args := mergeArgs(l.EtcdFlanneldArgs(e, n), extraArgs)
	return l.StartFlanneldCommand(t, n, env, append([]string{bin}, args...))
}

// StartFlanneldCommand runs argv as node n's flanneld (n.Flanneld() returns
// it), e.g. a flanneld configured only through FLANNELD_* variables in env.
func (l *Lab) StartFlanneldCommand(t testing.TB, n *Node, env, argv []string) *Process {
	t.Helper()
	p := l.Start(t, n.Netns, "flanneld-"+n.Name, env, argv...)
	l.mu.Lock()
	n.flanneld = p
	l.mu.Unlock()
	return p
}

// writeEtcdCerts writes a CA, a server certificate for EtcdIP and a client
// certificate into dir.
func writeEtcdCerts(dir string) (*EtcdTLS, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f := &EtcdTLS{
		CAFile:         filepath.Join(dir, "ca.pem"),
		CertFile:       filepath.Join(dir, "client.pem"),
		KeyFile:        filepath.Join(dir, "client-key.pem"),
		ServerCertFile: filepath.Join(dir, "server.pem"),
		ServerKeyFile:  filepath.Join(dir, "server-key.pem"),
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "flanneld lab etcd CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	if err := writePEM(f.CAFile, "CERTIFICATE", caDER); err != nil {
		return nil, err
	}
	issue := func(serial int64, cn string, usage x509.ExtKeyUsage, ips []net.IP, certFile, keyFile string) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			IPAddresses:  ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return err
		}
		if err := writePEM(certFile, "CERTIFICATE", der); err != nil {
			return err
		}
		return writePEM(keyFile, "EC PRIVATE KEY", keyDER)
	}
	if err := issue(2, "etcd", x509.ExtKeyUsageServerAuth, []net.IP{EtcdIP.AsSlice(), net.IPv4(127, 0, 0, 1)}, f.ServerCertFile, f.ServerKeyFile); err != nil {
		return nil, err
	}
	if err := issue(3, "flanneld", x509.ExtKeyUsageClientAuth, nil, f.CertFile, f.KeyFile); err != nil {
		return nil, err
	}
	return f, nil
}

func writePEM(path, blockType string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der}), 0o600)
}
