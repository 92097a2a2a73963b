package e2e

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/e2e/lab"
	"github.com/flanneld/flanneld/network/nstest"
)

const testImageRef = "flanneld.test.invalid/flanneld:image-test"

// ociDescriptor, ociIndex, ociManifest and ociConfig are the parts of the
// OCI image spec the test reads.
type ociDescriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Annotations map[string]string `json:"annotations"`
}

type ociIndex struct {
	Manifests []ociDescriptor `json:"manifests"`
}

type ociManifest struct {
	Config ociDescriptor   `json:"config"`
	Layers []ociDescriptor `json:"layers"`
}

type ociConfig struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Config       struct {
		Entrypoint []string `json:"Entrypoint"`
		Cmd        []string `json:"Cmd"`
		Env        []string `json:"Env"`
	} `json:"config"`
}

// readOCIArchive returns the files of an OCI image archive by name.
func readOCIArchive(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("reading %s: %v", path, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[strings.TrimPrefix(h.Name, "./")] = b
	}
	return files
}

func blob(t *testing.T, files map[string][]byte, digest string, v any) {
	t.Helper()
	b, ok := files["blobs/"+strings.Replace(digest, ":", "/", 1)]
	if !ok {
		t.Fatalf("blob %s missing from the archive", digest)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("blob %s: %v", digest, err)
	}
}

// TestImage builds the image as `make image` does (hack/build-image.sh:
// mmdebstrap and umoci, no docker, no registry) from bin/flanneld and
// bin/flannel, then checks it:
//
//   - the archive is an OCI layout with one manifest named by IMAGE, for
//     linux/GOARCH, entrypoint /opt/bin/flanneld and no cmd;
//   - unpacked with umoci, /opt/bin/flanneld, /opt/bin/install-conf and
//     /flannel are executable files, flanneld and the CNI plugin are
//     byte-for-byte bin/flanneld and bin/flannel, and the older paths
//     /opt/flanneld/{flanneld,flannel,install-cni-conf} lead to them;
//   - chrooted in the rootfs, flanneld --version prints our version, the CNI
//     plugin names flanneld, install-conf installs a file, nft runs, and
//     iptables-legacy and iptables-nft are there;
//   - the image's iptables is the wrapper, and in a namespace with legacy
//     rules the first iptables-save call picks legacy and records it in the
//     image's alternatives, and after resetting, one with nft rules picks nft.
//
// It skips when mmdebstrap or umoci is missing, and when the base is not
// cached and the Debian mirror cannot be reached. A warm build (base cached
// in bin/image/cache) takes seconds; a cold one about a minute.
func TestImage(t *testing.T) {
	lab.RequireRoot(t)
	for _, tool := range []string{"chroot", "unshare"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping: %s is missing (Debian's coreutils and util-linux)", tool)
		}
	}
	dir := t.TempDir()
	img := lab.BuildImage(t, dir, testImageRef)
	archive, flanneld, cni, version := img.Archive, img.Flanneld, img.CNI, img.Version

	// The OCI layout.
	files := readOCIArchive(t, archive)
	if _, ok := files["oci-layout"]; !ok {
		t.Fatal("the archive has no oci-layout")
	}
	var index ociIndex
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	if len(index.Manifests) != 1 {
		t.Fatalf("index.json has %d manifests, want 1", len(index.Manifests))
	}
	if got := index.Manifests[0].Annotations["org.opencontainers.image.ref.name"]; got != testImageRef {
		t.Errorf("the manifest is named %q, want IMAGE %q", got, testImageRef)
	}
	var manifest ociManifest
	blob(t, files, index.Manifests[0].Digest, &manifest)
	if len(manifest.Layers) != 2 {
		t.Errorf("the image has %d layers, want 2 (Debian base, flanneld)", len(manifest.Layers))
	}
	var config ociConfig
	blob(t, files, manifest.Config.Digest, &config)
	if !slices.Equal(config.Config.Entrypoint, []string{"/opt/bin/flanneld"}) || len(config.Config.Cmd) != 0 {
		t.Errorf("entrypoint %q cmd %q, want [/opt/bin/flanneld] and none", config.Config.Entrypoint, config.Config.Cmd)
	}
	if config.OS != "linux" || config.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s, want linux/%s", config.OS, config.Architecture, runtime.GOARCH)
	}

	// Unpacked with umoci.
	layout := filepath.Join(dir, "oci")
	if err := os.Mkdir(layout, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("tar", "-xf", archive, "-C", layout).CombinedOutput(); err != nil {
		t.Fatalf("untar: %v: %s", err, out)
	}
	bundle := filepath.Join(dir, "bundle")
	if out, err := exec.Command("umoci", "unpack", "--image", layout+":"+testImageRef, bundle).CombinedOutput(); err != nil {
		t.Fatalf("umoci unpack: %v: %s", err, out)
	}
	rootfs := filepath.Join(bundle, "rootfs")
	for _, p := range []string{"/opt/bin/flanneld", "/opt/bin/install-conf", "/flannel",
		"/opt/flanneld/flanneld", "/opt/flanneld/flannel", "/opt/flanneld/install-cni-conf",
		"/usr/sbin/iptables-legacy", "/usr/sbin/iptables-nft", "/usr/sbin/nft", "/usr/sbin/iptables-wrapper"} {
		fi, err := os.Stat(filepath.Join(rootfs, p)) // the symlinks are relative: they resolve inside rootfs
		if err != nil {
			t.Errorf("image: %v", err)
			continue
		}
		if !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
			t.Errorf("image: %s is %v, want an executable file", p, fi.Mode())
		}
	}
	for p, want := range map[string]string{"/opt/bin/flanneld": flanneld, "/flannel": cni} {
		got, err1 := os.ReadFile(filepath.Join(rootfs, p))
		ours, err2 := os.ReadFile(want)
		if err := errors.Join(err1, err2); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, ours) {
			t.Errorf("image: %s is not %s", p, want)
		}
	}
	chroot := func(env []string, args ...string) (string, error) {
		cmd := exec.Command("chroot", append([]string{rootfs}, args...)...)
		cmd.Env = append([]string{"PATH=/opt/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := chroot(nil, "/opt/bin/flanneld", "--version"); err != nil || strings.TrimSpace(out) != version {
		t.Errorf("chroot: /opt/bin/flanneld --version = %q, %v; want %q", out, err, version)
	}
	if out, err := chroot(nil, "/opt/flanneld/flanneld", "--version"); err != nil || strings.TrimSpace(out) != version {
		t.Errorf("chroot: /opt/flanneld/flanneld --version = %q, %v; want %q", out, err, version)
	}
	if out, err := chroot(nil, "/flannel"); err != nil || !strings.Contains(out, "flannel CNI plugin (flanneld "+version+")") {
		t.Errorf("chroot: /flannel (no CNI_COMMAND) = %q, %v; want its about line with %s", out, err, version)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "tmp", "conf.json"), []byte(`{"name":"cbr0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := chroot(nil, "/opt/bin/install-conf", "/tmp/conf.json", "/etc/10-flannel.conflist"); err != nil {
		t.Errorf("chroot: install-conf: %v: %s", err, out)
	} else if b, err := os.ReadFile(filepath.Join(rootfs, "etc", "10-flannel.conflist")); err != nil || string(b) != `{"name":"cbr0"}` {
		t.Errorf("install-conf installed %q, %v", b, err)
	}
	if out, err := chroot(nil, "nft", "--version"); err != nil || !strings.HasPrefix(out, "nftables") {
		t.Errorf("chroot: nft --version = %q, %v", out, err)
	}

	// The iptables wrapper in the image: both outcomes, recorded in the
	// image's alternatives. /proc (iptables-legacy reads its table names
	// there) and /dev are mounted in a mount namespace of the call's own.
	alternative := func(name string) string {
		target, err := os.Readlink(filepath.Join(rootfs, "etc", "alternatives", name))
		if err != nil {
			t.Fatal(err)
		}
		return target
	}
	for _, name := range []string{"iptables", "ip6tables"} {
		if got := alternative(name); got != "/usr/sbin/iptables-wrapper" {
			t.Fatalf("image: the %s alternative is %s, want /usr/sbin/iptables-wrapper", name, got)
		}
	}
	requireIPTablesVariants(t)
	script := `set -e
mount -t proc proc "$1/proc"
mount --bind /dev "$1/dev"
exec chroot "$1" env -i PATH=/opt/bin:/usr/sbin:/usr/bin:/sbin:/bin iptables-save -t filter`
	for _, tc := range wrapperCases[:2] { // legacy, then nft
		t.Run("iptables "+tc.name, func(t *testing.T) {
			ns := nstest.New(t)
			for _, c := range tc.setup {
				if _, err := runIn(ns, nil, "sh", "-c", c); err != nil {
					t.Fatalf("setup: %v", err)
				}
			}
			out, err := runIn(ns, nil, "unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", rootfs)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, tc.rule+"\n") {
				t.Errorf("the image's iptables-save lacks %q (it should be iptables-%s-save):\n%s", tc.rule, tc.want, out)
			}
			for _, name := range []string{"iptables", "ip6tables"} {
				if got, want := alternative(name), "/usr/sbin/"+name+"-"+tc.want; got != want {
					t.Errorf("after the first call the image's %s alternative is %s, want %s", name, got, want)
				}
			}
			// Back to the wrapper for the next case.
			if out, err := chroot(nil, "/bin/sh", "-c", "update-alternatives --set iptables /usr/sbin/iptables-wrapper && update-alternatives --set ip6tables /usr/sbin/iptables-wrapper"); err != nil {
				t.Fatalf("resetting the alternatives: %v: %s", err, out)
			}
		})
	}
}
